"""``dpokit data inspect``: what a dataset looks like before compute is spent on it.

Rows and their kind, token-length distributions under the tokenizer of the model to be trained,
duplicate pairs, chosen == rejected, prompts shared with the eval file, rows over the length
limits, and the chosen/rejected length bias (a model can learn "longer wins" instead of the
preference), with warnings, in one screen; ``plot`` draws the length histograms.

    >>> report = inspect_data("data/sentiment_pairs.train.jsonl", tokenizer=tok)  # doctest: +SKIP
    >>> print(report.text())                                                      # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import load_records
from ..split import prompt_key
from .format import render, tokenize


@dataclass
class LengthStats:
    values: list[int] = field(default_factory=list)

    def describe(self) -> str:
        if not self.values:
            return "-"
        v = sorted(self.values)
        p95 = v[min(len(v) - 1, int(0.95 * len(v)))]
        return (f"min {v[0]:5d}  median {statistics.median(v):7.1f}  p95 {p95:5d}  "
                f"max {v[-1]:5d}")


@dataclass
class InspectReport:
    path: str
    rows: int = 0
    kind: str = ""
    columns: list[str] = field(default_factory=list)
    lengths: dict[str, LengthStats] = field(default_factory=dict)  # tokens by part
    duplicates: int = 0  # rows repeating an earlier (prompt, chosen, rejected)
    identical: int = 0  # chosen == rejected
    over_prompt_limit: int = 0
    over_length_limit: int = 0  # prompt + longest completion > max_length (would be cut)
    chosen_longer: int = 0
    rejected_longer: int = 0
    length_difference: list[int] = field(default_factory=list)  # chosen - rejected tokens
    eval_rows: int = 0
    shared_prompts: int = 0  # distinct prompts in both files
    eval_rows_with_shared_prompt: int = 0
    warnings: list[str] = field(default_factory=list)
    unit: str = "tokens"

    @property
    def pairs(self) -> int:
        return self.chosen_longer + self.rejected_longer + sum(
            d == 0 for d in self.length_difference)

    def text(self) -> str:
        lines = [f"{self.path}: {self.rows} rows ({self.kind}); columns {', '.join(self.columns)}"]
        for part, stats in self.lengths.items():
            lines.append(f"  {part:<9} {self.unit}: {stats.describe()}")
        lines.append(f"  over max_prompt_length: {self.over_prompt_limit}; over max_length "
                     f"(completion would be cut): {self.over_length_limit}")
        if self.kind == "preference pairs":
            n = max(len(self.length_difference), 1)
            mean = sum(self.length_difference) / n
            lines.append(f"  duplicate pairs: {self.duplicates}; chosen == rejected: "
                         f"{self.identical}")
            lines.append(f"  length bias: chosen longer in {self.chosen_longer / n:.1%} of "
                         f"pairs, rejected longer in {self.rejected_longer / n:.1%}; mean "
                         f"chosen - rejected {mean:+.1f} {self.unit}")
        if self.eval_rows:
            lines.append(f"  eval file: {self.eval_rows} rows; {self.shared_prompts} prompts "
                         f"also in train ({self.eval_rows_with_shared_prompt} eval rows)")
        lines += [f"  warning: {w}" for w in self.warnings] or ["  no warnings"]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        from ...core.packages import need

        need("matplotlib", "data", "dpokit data inspect --png")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for part, stats in self.lengths.items():
            if stats.values:
                ax.hist(stats.values, bins=40, alpha=0.5, label=part)
        ax.set_xlabel(f"{self.unit} per part")
        ax.set_ylabel("rows")
        ax.set_title(Path(self.path).name)
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _kind(columns: set[str]) -> tuple[str, tuple[str, ...]]:
    if {"chosen", "rejected"} <= columns:
        return "preference pairs", ("chosen", "rejected")
    if {"completion", "label"} <= columns:
        return "unpaired (KTO) rows", ("completion",)
    if "completion" in columns:
        return "SFT rows", ("completion",)
    if "messages" in columns:
        return "SFT conversations", ()
    if "text" in columns:
        return "plain text", ()
    return "unknown", ()


def inspect_data(path: str, eval_path: str | None = None, tokenizer=None, max_length: int = 512,
                 max_prompt_length: int = 256, chat_template_for_strings: bool = False,
                 **template_kwargs: Any) -> InspectReport:
    """Inspect ``path`` (and its overlap with ``eval_path``); lengths in the tokenizer's
    tokens, or in words when ``tokenizer`` is None."""
    records = load_records(path)
    report = InspectReport(path, rows=len(records))
    columns = sorted({c for r in records for c in r.values})
    report.columns = columns
    report.kind, parts = _kind(set(columns))
    report.unit = "tokens" if tokenizer is not None else "words"

    def count(text: str, special: bool = False) -> int:
        return len(tokenize(tokenizer, text, special)) if tokenizer is not None else len(
            text.split())

    report.lengths = {"prompt": LengthStats(), **{p: LengthStats() for p in parts}}
    seen: set[str] = set()
    for rec in records:
        v = rec.values
        prompt = v.get("prompt", "")
        sizes = {}
        for part in parts:
            completion = v.get(part, "")
            if tokenizer is not None and prompt:
                p_text, c_text, special, _ = render(tokenizer, prompt, completion, rec, part,
                                                    chat_template_for_strings)
            else:
                p_text, c_text, special = str(prompt), str(completion), True
            sizes["prompt"] = count(p_text, special)
            sizes[part] = count(c_text)
        if not parts:
            text = v.get("text", v.get("messages", ""))
            sizes["prompt"] = count(text if isinstance(text, str) else str(text))
        for part, n in sizes.items():
            report.lengths[part].values.append(n)
        report.over_prompt_limit += sizes["prompt"] > max_prompt_length
        longest = max((sizes[p] for p in parts), default=0)
        report.over_length_limit += sizes["prompt"] + longest > max_length
        if report.kind == "preference pairs":
            key = repr((prompt_key(prompt), v.get("chosen"), v.get("rejected")))
            report.duplicates += key in seen
            seen.add(key)
            report.identical += v.get("chosen") == v.get("rejected")
            diff = sizes["chosen"] - sizes["rejected"]
            report.length_difference.append(diff)
            report.chosen_longer += diff > 0
            report.rejected_longer += diff < 0
    if eval_path:
        held = load_records(eval_path)
        report.eval_rows = len(held)
        train_prompts = {prompt_key(r.values.get("prompt", "")) for r in records}
        shared = Counter(prompt_key(r.values.get("prompt", "")) for r in held
                         if prompt_key(r.values.get("prompt", "")) in train_prompts)
        report.shared_prompts, report.eval_rows_with_shared_prompt = len(shared), sum(
            shared.values())
    _warn(report)
    return report


def _warn(r: InspectReport) -> None:
    n = max(len(r.length_difference), 1)
    if r.duplicates:
        r.warnings.append(f"{r.duplicates} duplicate pairs (they weigh double)")
    if r.identical:
        r.warnings.append(f"{r.identical} pairs with chosen == rejected (no signal; DPO's "
                          f"gradient is zero on them)")
    if r.length_difference and (r.chosen_longer / n > 0.65 or r.rejected_longer / n > 0.65):
        longer = "chosen" if r.chosen_longer > r.rejected_longer else "rejected"
        r.warnings.append(f"the {longer} answer is longer in "
                          f"{max(r.chosen_longer, r.rejected_longer) / n:.0%} of pairs: a model "
                          f"can learn length instead of the preference (consider LD-DPO "
                          f"ld_alpha, a length-normalized loss, or rebalancing)")
    if r.over_length_limit:
        r.warnings.append(f"{r.over_length_limit} rows exceed max_length: their completions "
                          f"would be truncated")
    if r.over_prompt_limit:
        r.warnings.append(f"{r.over_prompt_limit} prompts exceed max_prompt_length: those rows "
                          f"are bad rows (error, or skipped with on_bad_rows=skip)")
    if r.shared_prompts:
        r.warnings.append(f"{r.shared_prompts} prompts are in both train and eval: held-out "
                          f"figures overstate generalization (`dpokit data split` splits by "
                          f"prompt)")
