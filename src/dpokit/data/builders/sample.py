"""Pairs from the model's own samples: K completions per prompt, scored by a reward, paired
as :mod:`.scored` does. The sampler and the reward are functions, so this file knows no model.

    >>> sampler = lambda prompts: [[SampleText("short", True), SampleText("longer one", True)]
    ...                            for _ in prompts]
    >>> reward = lambda prompts, texts, refs: [len(t) for t in texts]
    >>> built = sample_pairs([PromptRow("Q")], sampler, reward)
    >>> built.rows[0]["chosen"], built.rows[0]["rejected"], built.rows[0]["rule"]
    ('longer one', 'short', 'sample:best_worst')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..io import DataError, Record
from .common import BuildReport, BuiltPairs, as_record
from .scored import ScoredGroup, ScoredSettings, _prompt_id, pair_scored


class SampleLike(Protocol):
    text: str
    finished: bool


@dataclass(frozen=True)
class SampleText:
    text: str
    finished: bool = True


@dataclass(frozen=True)
class PromptRow:
    """A prompt to sample for, with an optional reference answer (for similarity rewards)."""

    prompt: Any
    reference: str | None = None
    prompt_id: str = ""

    @property
    def id(self) -> str:
        return self.prompt_id or _prompt_id(self.prompt)


Sampler = Callable[[list[Any]], list[list[SampleLike]]]
RewardFn = Callable[[Sequence[Any], Sequence[str], Sequence[str | None]], list[float]]


def prompt_rows(rows: Iterable[Record | Mapping[str, Any]]) -> list[PromptRow]:
    """Rows with ``prompt`` (string or messages), optional ``reference`` and ``prompt_id``; a
    preference file works too (its ``chosen`` is then taken as the reference)."""
    out = []
    for i, row in enumerate(rows):
        rec = as_record(row, i)
        v = rec.values
        if "prompt" not in v:
            raise DataError(rec.source, rec.row, "prompt", "missing column: 'prompt'")
        reference = v.get("reference", v.get("chosen"))
        out.append(PromptRow(v["prompt"], reference if isinstance(reference, str) else None,
                             str(v.get("prompt_id") or "")))
    return out


@dataclass
class ScoredSamples:
    """Every sample with its reward (``groups``), for pairing and for reward statistics."""

    groups: list[ScoredGroup]
    finished: list[list[bool]]

    def mean_reward(self) -> float:
        scores = [s for g in self.groups for _, s in g.responses if s is not None]
        return sum(scores) / max(len(scores), 1)


def score_samples(prompts: Sequence[PromptRow], sampler: Sampler,
                  reward: RewardFn) -> ScoredSamples:
    """Sample every prompt, then score all samples in one reward call."""
    samples = sampler([p.prompt for p in prompts])
    flat_prompts, texts, refs = [], [], []
    for row, group in zip(prompts, samples, strict=True):
        for s in group:
            flat_prompts.append(row.prompt)
            texts.append(s.text)
            refs.append(row.reference)
    scores = iter(reward(flat_prompts, texts, refs) if texts else [])
    groups = [ScoredGroup(row.id, row.prompt, [(s.text, next(scores)) for s in group])
              for row, group in zip(prompts, samples, strict=True)]
    return ScoredSamples(groups, [[s.finished for s in group] for group in samples])


def sample_pairs(prompts: Sequence[PromptRow], sampler: Sampler, reward: RewardFn,
                 settings: ScoredSettings | None = None,
                 reward_name: str = "reward") -> BuiltPairs:
    """K samples per prompt, scored, paired (``settings.pairing``); rows carry the reward's
    name and whether each side ended by itself (not cut at the token limit)."""
    settings = settings or ScoredSettings()
    scored = score_samples(prompts, sampler, reward)
    built = pair_scored(scored.groups, settings)
    finished = {g.prompt_id: f for g, f in zip(scored.groups, scored.finished, strict=True)}
    for row in built.rows:
        row["rule"] = f"sample:{settings.pairing}"
        row["reward"] = reward_name
        done = finished[row["prompt_id"]]
        row["chosen_finished"] = done[row["chosen_index"]]
        row["rejected_finished"] = done[row["rejected_index"]]
    report: BuildReport = built.report
    report.notes.append(f"mean reward of {sum(len(g.responses) for g in scored.groups)} samples: "
                        f"{scored.mean_reward():.4f}")
    return built
