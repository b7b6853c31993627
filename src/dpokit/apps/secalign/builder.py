"""Training rows of the three arms from clean instruction tasks:

- ``sft_rows(tasks, frontend)``: plain instruction tuning (the undefended arm with the
  ``textual`` front end);
- ``struq_rows(tasks, ...)``: structured instruction tuning (StruQ): a share of the samples
  carry another sample's instruction injected into their data, the target still the real
  output;
- ``preference_rows(tasks, ...)``: SecAlign's pairs: the data carries another sample's
  instruction (a share appended plainly, optionally a share in "ignore the above" sentences,
  the rest as a fake completion with randomized delimiter spellings); chosen = the output
  for the real instruction, rejected = the output for the injected one.

Every choice is drawn from ``random.Random(seed)``; shares and seed are arguments.

    >>> tasks = [make_task("last_word", "Red sky at night.", random.Random(0)),
    ...          make_task("print", "Hi", random.Random(0))]
    >>> row = preference_rows(tasks, seed=0, naive_share=1.0)[0]
    >>> row["chosen"], row["rejected"], "Print exactly 'Hi!'" in row["prompt"]
    ('night', 'Hi!', True)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ...core.types import NON_NEGATIVE, UNIT_INTERVAL
from ...data.builders.common import option
from .attacks import fake_completion, ignore, naive
from .frontend import FRONTENDS, Frontend
from .tasks import Task, injected_prompt, make_task  # noqa: F401  (make_task: doctest)


def _frontend(frontend: str | Frontend) -> Frontend:
    return FRONTENDS[frontend] if isinstance(frontend, str) else frontend


def _inject(task: Task, other: Task, rng: random.Random, naive_share: float,
            ignore_share: float = 0.0) -> str:
    """``task``'s data carrying ``other``'s instruction: appended plainly (``naive_share``),
    in an "ignore the above" sentence of the training phrasings (``ignore_share``), else as a
    fake completion with look-alike delimiters seen in training."""
    injected = injected_prompt(other)
    draw = rng.random()
    if draw < naive_share:
        return naive(task.input, injected, "", rng)
    if draw < naive_share + ignore_share:
        return ignore(task.input, injected, "", rng, split="train")
    return fake_completion(task.input, injected, task.output, rng, split="train")


def _other(tasks: Sequence[Task], task: Task, rng: random.Random) -> Task:
    while True:  # another task with another answer (else chosen == rejected)
        other = rng.choice(tasks)
        if other is not task and other.output != task.output:
            return other


def sft_rows(tasks: Sequence[Task], frontend: str | Frontend = "textual") -> list[dict]:
    """Prompt/completion rows of the clean tasks."""
    fe = _frontend(frontend)
    return [{"prompt": fe.prompt(t.instruction, t.input), "completion": t.output}
            for t in tasks]


def struq_rows(tasks: Sequence[Task], frontend: str | Frontend = "struq", seed: int = 0,
               injected_share: float = 0.5, naive_share: float = 0.5,
               ignore_share: float = 0.0) -> list[dict]:
    """StruQ: each task with data is injected with probability ``injected_share``; the
    completion is the real output either way. Tasks without data stay clean."""
    rng, fe = random.Random(seed), _frontend(frontend)
    rows = []
    for task in tasks:
        data = task.input
        if data and rng.random() < injected_share:
            data = _inject(task, _other(tasks, task, rng), rng, naive_share, ignore_share)
        rows.append({"prompt": fe.prompt(task.instruction, data), "completion": task.output})
    return rows


def preference_rows(tasks: Sequence[Task], frontend: str | Frontend = "struq", seed: int = 0,
                    naive_share: float = 0.9, ignore_share: float = 0.0) -> list[dict]:
    """SecAlign pairs, one per task with data (SecAlign's shares: 90% plain appends, 10% fake
    completions, no "ignore" sentences)."""
    rng, fe = random.Random(seed), _frontend(frontend)
    rows = []
    for task in tasks:
        if not task.input:
            continue
        other = _other(tasks, task, rng)
        data = _inject(task, other, rng, naive_share, ignore_share)
        rows.append({"prompt": fe.prompt(task.instruction, data), "chosen": task.output,
                     "rejected": other.output, "family": task.family,
                     "injected_family": other.family})
    return rows


@dataclass(frozen=True)
class InjectionSettings:
    """What ``dpokit pairs injection`` writes from task rows."""

    rows: Literal["preference", "struq", "sft"] = option(
        "preference", "preference: SecAlign pairs; struq: StruQ SFT rows (a share injected); "
        "sft: clean SFT rows")
    frontend: Literal["struq", "textual"] = option("struq", "prompt format (struq: reserved "
                                                   "delimiter tokens, data filtered)")
    naive_share: float = option(0.9, "share of injections appended plainly (the rest: fake "
                                "completions with look-alike delimiters)", UNIT_INTERVAL)
    ignore_share: float = option(0.0, "share of injections inside an 'ignore the above' "
                                 "sentence (training phrasings; the evaluation's are held out)",
                                 UNIT_INTERVAL)
    injected_share: float = option(0.5, "struq: share of the samples with data injected",
                                   UNIT_INTERVAL)
    seed: int = option(0, "seeds every choice", NON_NEGATIVE)


def injection_rows(tasks: Sequence[Task], settings: InjectionSettings) -> list[dict]:
    """The rows ``settings.rows`` asks for."""
    if settings.rows == "sft":
        return sft_rows(tasks, settings.frontend)
    if settings.rows == "struq":
        return struq_rows(tasks, settings.frontend, settings.seed, settings.injected_share,
                          settings.naive_share, settings.ignore_share)
    return preference_rows(tasks, settings.frontend, settings.seed, settings.naive_share,
                           settings.ignore_share)
