"""Validate, format and tokenize preference rows into :class:`TokenizedPair` objects.

Three row formats are accepted (detected per row):

- standard: ``prompt``, ``chosen``, ``rejected`` strings;
- conversational: message lists (``[{"role": ..., "content": ...}]``) for any of the three,
  rendered with the tokenizer's chat template;
- implicit prompt: only ``chosen`` and ``rejected``; their shared prefix is the prompt.

Tokenization keeps the prompt/completion boundary exact: prompt and completion are tokenized
separately and concatenated, so the completion's tokens are exactly those after the prompt's.
EOS is appended to each completion (unless the chat template already ended it with EOS).

Truncation policy: a prompt longer than ``max_prompt_length`` tokens is a bad row (it is never
cut); a completion that does not fit in ``max_length`` with its prompt keeps its first tokens
(and so loses EOS), and the number of completions cut is reported.

    >>> pairs = build_pairs(load_records("data/sentiment_pairs.eval.jsonl"), tok,
    ...                     TokenizeSettings(max_length=256))          # doctest: +SKIP
    >>> pairs.report.summary()                                          # doctest: +SKIP
    '40 pairs kept; 0 skipped; 0 completions truncated'
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from .loading import DataError, Record

OnBadRows = Literal["error", "skip"]


@dataclass(frozen=True)
class TokenizeSettings:
    max_length: int = 1024  # prompt + completion tokens, per sequence
    max_prompt_length: int = 512
    chat_template_for_strings: bool = False  # render standard string rows as a chat turn
    extra_columns: tuple[str, ...] = ()  # numeric per-pair columns carried to the loss
    offset_alpha: float = 1.0  # ODPO: offset = alpha * log(1 + score_chosen - score_rejected)


@dataclass
class TokenizedPair:
    """One pair, tokenized. ``index`` is its position in the kept dataset."""

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    extras: dict[str, float] = field(default_factory=dict)
    source: str = ""
    row: int = 0


@dataclass
class DataReport:
    """What happened to the rows: kept, skipped (by reason), completions truncated."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_skipped: list[str] = field(default_factory=list)  # up to 5 located examples
    truncated_completions: int = 0
    unit: str = "pairs"  # what is counted: "pairs", or "unpaired rows" (KTO)

    def skip(self, err: DataError) -> None:
        self.skipped[err.reason.split(":")[0]] += 1
        if len(self.first_skipped) < 5:
            self.first_skipped.append(str(err))

    def summary(self) -> str:
        total = sum(self.skipped.values())
        text = (f"{self.kept} {self.unit} kept; {total} skipped; "
                f"{self.truncated_completions} completions truncated")
        if total:
            text += " (" + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) + ")"
        return text


@dataclass
class PreferencePairs:
    """A tokenized dataset with its report and a fingerprint of every token id."""

    pairs: list[TokenizedPair]
    report: DataReport

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TokenizedPair:
        return self.pairs[i]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for p in self.pairs:
            digest.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
        return digest.hexdigest()


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _check_text(record: Record, name: str) -> Any:
    if name not in record.values:
        raise DataError(record.source, record.row, name, f"missing column: {name!r} "
                        f"(columns present: {sorted(record.values)})")
    value = record.values[name]
    if _is_messages(value):
        if not value:
            raise DataError(record.source, record.row, name, "empty field: no messages")
        for i, message in enumerate(value):
            if not isinstance(message.get("content"), str) or "role" not in message:
                raise DataError(record.source, record.row, f"{name}[{i}]",
                                "not a string: a message needs a 'role' and a string 'content'")
        return value
    if not isinstance(value, str):
        raise DataError(record.source, record.row, name,
                        f"not a string: got {type(value).__name__}")
    if not value.strip():
        raise DataError(record.source, record.row, name, "empty field")
    return value


def _split_implicit(record: Record, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Shared prefix -> prompt. Text: cut at the last whitespace; messages: whole messages."""
    if _is_messages(chosen) and _is_messages(rejected):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    elif isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        n = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1), 0)  # word boundary
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    else:
        raise DataError(record.source, record.row, "rejected",
                        "chosen and rejected must both be strings or both be message lists")
    if not prompt:
        raise DataError(record.source, record.row, "chosen",
                        "empty field: implicit-prompt row whose chosen and rejected share no prefix")
    return prompt, chosen, rejected


def _render(tokenizer, prompt: Any, completion: Any, record: Record, name: str,
            settings: TokenizeSettings) -> tuple[str, str, bool, bool]:
    """Return (prompt_text, completion_text, add_special_tokens, ends_with_eos)."""
    chat = _is_messages(prompt) or _is_messages(completion) or settings.chat_template_for_strings
    if not chat:
        return prompt, completion, True, False
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(record.source, record.row, name,
                        "conversational row, but the tokenizer has no chat template")
    prompt_msgs = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
    completion_msgs = (completion if _is_messages(completion)
                       else [{"role": "assistant", "content": completion}])
    prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False,
                                                add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt_msgs + completion_msgs, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise DataError(record.source, record.row, name, "the chat template does not render the "
                        "prompt as a prefix of prompt + completion")
    completion_text = full_text[len(prompt_text):]
    eos = tokenizer.eos_token
    ends_with_eos = bool(eos) and completion_text.rstrip().endswith(eos)
    if ends_with_eos:
        completion_text = completion_text.rstrip()  # drop the template's newline after EOS
    return prompt_text, completion_text, False, ends_with_eos


def _tokenize(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _extras(record: Record, settings: TokenizeSettings) -> dict[str, float]:
    extras = {}
    for name in settings.extra_columns:
        value = record.values.get(name)
        if value is None and name == "offset" and {"score_chosen", "score_rejected"} <= record.values.keys():
            value = _offset_from_scores(record, settings.offset_alpha)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(record.source, record.row, name,
                            f"missing column or not a finite number: {value!r}")
        extras[name] = float(value)
    return extras


def _offset_from_scores(record: Record, alpha: float) -> float:
    """ODPO offset α·log(1 + s_w - s_l) from ``score_chosen`` / ``score_rejected`` columns."""
    s_w, s_l = record.values["score_chosen"], record.values["score_rejected"]
    for name, v in (("score_chosen", s_w), ("score_rejected", s_l)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(record.source, record.row, name, f"not a finite number: {v!r}")
    if s_w < s_l:
        raise DataError(record.source, record.row, "score_chosen",
                        f"score_chosen {s_w} is below score_rejected {s_l}")
    return alpha * math.log1p(s_w - s_l)


def _tokenize_completions(record: Record, tokenizer, settings: TokenizeSettings, prompt: Any,
                          named: list[tuple[str, Any]]) -> tuple[list[int], list[list[int]], int]:
    """Tokenize one prompt and its completions; return (prompt ids, completion ids, number
    truncated). The prompt is checked against the length limits; completions are cut to fit."""
    prompt_ids: list[int] | None = None
    completions = []
    for name, completion in named:
        prompt_text, completion_text, special, has_eos = _render(
            tokenizer, prompt, completion, record, name, settings)
        ids = _tokenize(tokenizer, prompt_text, special)
        if prompt_ids is None:
            prompt_ids = ids
        elif ids != prompt_ids:  # message-list completions could carry their own context
            raise DataError(record.source, record.row, name,
                            "completions render different prompts")
        completion_ids = _tokenize(tokenizer, completion_text, False)
        if not has_eos and tokenizer.eos_token_id is not None:
            completion_ids.append(tokenizer.eos_token_id)
        completions.append(completion_ids)
    assert prompt_ids is not None
    if not prompt_ids:
        raise DataError(record.source, record.row, "prompt", "empty field: prompt has no tokens")
    if len(prompt_ids) > settings.max_prompt_length:
        raise DataError(record.source, record.row, "prompt",
                        f"prompt too long: {len(prompt_ids)} tokens > max_prompt_length="
                        f"{settings.max_prompt_length}")
    room = settings.max_length - len(prompt_ids)
    if room < 1:
        raise DataError(record.source, record.row, "prompt",
                        f"prompt too long: {len(prompt_ids)} tokens leave no room in max_length="
                        f"{settings.max_length}")
    truncated = sum(len(ids) > room for ids in completions)
    return prompt_ids, [ids[:room] for ids in completions], truncated


def tokenize_record(record: Record, tokenizer, settings: TokenizeSettings,
                    report: DataReport, index: int) -> TokenizedPair:
    """Validate and tokenize one paired row, raising :class:`DataError` for a bad one."""
    chosen = _check_text(record, "chosen")
    rejected = _check_text(record, "rejected")
    if "prompt" in record.values:
        prompt = _check_text(record, "prompt")
    else:
        prompt, chosen, rejected = _split_implicit(record, chosen, rejected)
    if chosen == rejected:
        raise DataError(record.source, record.row, "chosen", "chosen identical to rejected")
    extras = _extras(record, settings)
    prompt_ids, (chosen_ids, rejected_ids), truncated = _tokenize_completions(
        record, tokenizer, settings, prompt, [("chosen", chosen), ("rejected", rejected)])
    if chosen_ids == rejected_ids:
        raise DataError(record.source, record.row, "chosen",
                        "chosen identical to rejected after truncation")
    report.truncated_completions += truncated  # counted only for rows that are kept
    return TokenizedPair(index, prompt_ids, chosen_ids, rejected_ids, extras,
                         record.source, record.row)


_TRUE = {True, "1", "true", "True", "yes"}
_FALSE = {False, "0", "false", "False", "no"}


def tokenize_unpaired_record(record: Record, tokenizer, settings: TokenizeSettings,
                             report: DataReport, index: int) -> TokenizedPair:
    """Validate and tokenize a (prompt, completion, label) row. The KL completion
    (``rejected_ids``) is filled in by :func:`build_unpaired`."""
    prompt = _check_text(record, "prompt")
    completion = _check_text(record, "completion")
    if "label" not in record.values:
        raise DataError(record.source, record.row, "label", "missing column: 'label'")
    label = record.values["label"]
    if isinstance(label, float) and label in (0.0, 1.0):
        label = int(label)
    if label not in _TRUE and label not in _FALSE:
        raise DataError(record.source, record.row, "label",
                        f"not a boolean: {label!r} (use true/false or 1/0)")
    extras = _extras(record, settings)
    extras["label"] = 1.0 if label in _TRUE else 0.0
    prompt_ids, (completion_ids,), truncated = _tokenize_completions(
        record, tokenizer, settings, prompt, [("completion", completion)])
    report.truncated_completions += truncated
    return TokenizedPair(index, prompt_ids, completion_ids, [], extras, record.source, record.row)


def build_unpaired(records: list[Record], tokenizer, settings: TokenizeSettings,
                   on_bad_rows: OnBadRows = "error") -> PreferencePairs:
    """Tokenize unpaired rows (KTO format). Row i's mismatched KL completion is the completion of
    kept row i+1 (cyclically), cut to fit row i's length budget; this fixed pairing lets the
    reference log-probs of the KL completions be precomputed like any other."""
    pairs = _build(records, tokenizer, settings, on_bad_rows, tokenize_unpaired_record,
                   unit="unpaired rows")
    if len(pairs) < 2:
        raise DataError(records[0].source, None, None, "unpaired data needs at least 2 rows")
    items = pairs.pairs
    for i, item in enumerate(items):
        other = items[(i + 1) % len(items)].chosen_ids
        item.rejected_ids = other[: settings.max_length - len(item.prompt_ids)]
    return pairs


def build_pairs(records: list[Record], tokenizer, settings: TokenizeSettings,
                on_bad_rows: OnBadRows = "error") -> PreferencePairs:
    """Tokenize every paired record; a bad row raises, or with ``on_bad_rows="skip"`` is
    skipped and counted by reason."""
    return _build(records, tokenizer, settings, on_bad_rows, tokenize_record)


def _build(records, tokenizer, settings, on_bad_rows, tokenize_one,
           unit: str = "pairs") -> PreferencePairs:
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    report = DataReport(unit=unit)
    pairs: list[TokenizedPair] = []
    for record in records:
        try:
            pairs.append(tokenize_one(record, tokenizer, settings, report, len(pairs)))
        except DataError as err:
            if on_bad_rows == "error":
                raise
            report.skip(err)
    report.kept = len(pairs)
    if not pairs:
        source = records[0].source if records else "dataset"
        raise DataError(source, None, None, f"no usable rows: {report.summary()}")
    return PreferencePairs(pairs, report)
