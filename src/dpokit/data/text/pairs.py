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

import math
from dataclasses import dataclass, field
from typing import Any

from ...losses.paired import odpo_offset_from_scores
from ..io import DataError, Record, as_number
from ..report import DataReport, ExampleSet, OnBadRows, build_examples
from .format import TEMPLATE_COLUMNS, check_columns, check_text, is_messages, tokenize_completions

PreferencePairs = ExampleSet  # a tokenized preference dataset (items: TokenizedPair)


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

    def token_lists(self) -> list[list[int]]:
        return [self.prompt_ids, self.chosen_ids, self.rejected_ids]


def _split_implicit(record: Record, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """Shared prefix -> prompt. Text: cut at the last whitespace; messages: whole messages."""
    if is_messages(chosen) and is_messages(rejected):
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
        raise DataError(
            record.source,
            record.row,
            "chosen",
            "empty field: implicit-prompt row whose chosen and rejected share no prefix",
        )
    return prompt, chosen, rejected


def _extras(record: Record, settings: TokenizeSettings) -> dict[str, float]:
    extras = {}
    for name in settings.extra_columns:
        value = record.values.get(name)
        if (
            value is None
            and name == "offset"
            and {"score_chosen", "score_rejected"} <= record.values.keys()
        ):
            value = _offset_from_scores(record, settings.offset_alpha)
        extras[name] = _finite(record, name, value)
    return extras


def _finite(record: Record, name: str, value: object) -> float:
    """A numeric column through the one parser (:func:`~dpokit.data.io.as_number`), or an error
    naming the row and field."""
    number = as_number(value)
    if number is None or math.isnan(number):
        what = "missing column" if number is None else "not a finite number"
        raise DataError(record.source, record.row, name, f"{what}: {value!r}")
    return number


def _offset_from_scores(record: Record, alpha: float) -> float:
    """ODPO offset from ``score_chosen`` / ``score_rejected`` columns (the loss's formula)."""
    s_w, s_l = (_finite(record, name, record.values[name])
                for name in ("score_chosen", "score_rejected"))
    if s_w < s_l:
        raise DataError(
            record.source,
            record.row,
            "score_chosen",
            f"score_chosen {s_w:g} is below score_rejected {s_l:g}",
        )
    return odpo_offset_from_scores(s_w, s_l, alpha)


def _tokenize(record, tokenizer, settings: TokenizeSettings, prompt, named):
    return tokenize_completions(
        record,
        tokenizer,
        prompt,
        named,
        settings.max_length,
        settings.max_prompt_length,
        settings.chat_template_for_strings,
    )


PAIR_COLUMNS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected",
                *TEMPLATE_COLUMNS)
UNPAIRED_COLUMNS = ("prompt", "completion", "label", *TEMPLATE_COLUMNS)


def tokenize_record(record: Record, tokenizer, settings: TokenizeSettings, report: DataReport,
                    index: int, implicit_prompt: bool = True) -> TokenizedPair:
    """Validate and tokenize one paired row, raising :class:`DataError` for a bad one.
    ``implicit_prompt``: a row without ``prompt`` takes the shared prefix of chosen and
    rejected as its prompt (only when the whole file has no prompt column)."""
    check_columns(record, PAIR_COLUMNS + settings.extra_columns)
    chosen = check_text(record, "chosen")
    rejected = check_text(record, "rejected")
    if "prompt" in record.values:
        prompt = check_text(record, "prompt")
    elif not implicit_prompt:
        raise DataError(record.source, record.row, "prompt", "missing column: 'prompt' (other "
                        "rows have one; a file is implicit-prompt only when no row has one)")
    else:
        prompt, chosen, rejected = _split_implicit(record, chosen, rejected)
    if chosen == rejected:
        raise DataError(record.source, record.row, "chosen", "chosen identical to rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and \
            "".join(chosen.split()) == "".join(rejected.split()):
        raise DataError(record.source, record.row, "chosen", "chosen and rejected differ only "
                        "in whitespace (no preference signal a model could learn)")
    extras = _extras(record, settings)
    prompt_ids, (chosen_ids, rejected_ids), truncated = _tokenize(
        record, tokenizer, settings, prompt, [("chosen", chosen), ("rejected", rejected)]
    )
    eos = getattr(tokenizer, "eos_token_id", None)
    if _without_end(chosen_ids, eos) == _without_end(rejected_ids, eos):
        why = ("after truncation" if chosen_ids == rejected_ids
               else "but for the end-of-sequence token")
        raise DataError(record.source, record.row, "chosen", f"chosen identical to rejected "
                        f"{why}")
    report.truncated_completions += truncated  # counted only for rows that are kept
    return TokenizedPair(
        index, prompt_ids, chosen_ids, rejected_ids, extras, record.source, record.row
    )


_TRUE = {True, "1", "true", "True", "yes"}
_FALSE = {False, "0", "false", "False", "no"}


def tokenize_unpaired_record(
    record: Record, tokenizer, settings: TokenizeSettings, report: DataReport, index: int
) -> TokenizedPair:
    """Validate and tokenize a (prompt, completion, label) row. The KL completion
    (``rejected_ids``) is filled in by :func:`build_unpaired`."""
    check_columns(record, UNPAIRED_COLUMNS + settings.extra_columns)
    prompt = check_text(record, "prompt")
    completion = check_text(record, "completion")
    if "label" not in record.values:
        raise DataError(record.source, record.row, "label", "missing column: 'label'")
    label = record.values["label"]
    if isinstance(label, float) and label in (0.0, 1.0):
        label = int(label)
    if label not in _TRUE and label not in _FALSE:
        raise DataError(
            record.source, record.row, "label", f"not a boolean: {label!r} (use true/false or 1/0)"
        )
    extras = _extras(record, settings)
    extras["label"] = 1.0 if label in _TRUE else 0.0
    prompt_ids, (completion_ids,), truncated = _tokenize(
        record, tokenizer, settings, prompt, [("completion", completion)]
    )
    report.truncated_completions += truncated
    return TokenizedPair(index, prompt_ids, completion_ids, [], extras, record.source, record.row)


def build_unpaired(records: list[Record], tokenizer, settings: TokenizeSettings,
                   on_bad_rows: OnBadRows = "error",
                   skipped: list[DataError] | None = None) -> ExampleSet:
    """Tokenize unpaired rows (KTO format). Row i's mismatched KL completion is the completion of
    kept row i+1 (cyclically), cut to fit row i's length budget; this fixed pairing lets the
    reference log-probs of the KL completions be precomputed like any other."""
    pairs = build_examples(records, lambda r, rep, i: tokenize_unpaired_record(
        r, tokenizer, settings, rep, i), on_bad_rows, unit="unpaired rows", skipped=skipped)
    if len(pairs) < 2:
        raise DataError(records[0].source, None, None, "unpaired data needs at least 2 rows")
    items = pairs.items
    for i, item in enumerate(items):
        other = items[(i + 1) % len(items)].chosen_ids
        item.rejected_ids = other[: settings.max_length - len(item.prompt_ids)]
    return pairs


def build_pairs(records: list[Record], tokenizer, settings: TokenizeSettings,
                on_bad_rows: OnBadRows = "error",
                skipped: list[DataError] | None = None) -> ExampleSet:
    """Tokenize every paired record; a bad row raises, or with ``on_bad_rows="skip"`` is
    skipped and counted by reason. The file is implicit-prompt only when no row has one."""
    implicit = not any("prompt" in r.values for r in records)
    pairs = build_examples(records, lambda r, rep, i: tokenize_record(
        r, tokenizer, settings, rep, i, implicit), on_bad_rows, skipped=skipped)
    if implicit:
        pairs.report.notes.append("implicit prompt: no row has a `prompt`, so the shared "
                                  "prefix of chosen and rejected is each pair's prompt")
    return pairs


def _without_end(ids: list[int], eos: int | None) -> list[int]:
    """Token ids without trailing end-of-sequence tokens."""
    end = len(ids)
    while eos is not None and end and ids[end - 1] == eos:
        end -= 1
    return ids[:end]
