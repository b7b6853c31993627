"""SFT rows -> :class:`TokenizedSequence`: prompt/completion, conversational and plain text.

Row formats (detected per row):

- ``prompt`` + ``completion`` (strings, or message lists rendered with the chat template);
- ``messages``: a conversation; the last message is the completion (it must be the
  assistant's), everything before it the prompt;
- ``text``: plain text; every token but the first is scored (language modelling).

With ``completion_only_loss`` (default) only completion tokens are scored; without it the
prompt's tokens are scored too. The prompt/completion boundary is exact, as for pairs: the
completion's tokens are exactly those after the prompt's. A completion that does not fit in
``max_length`` keeps its start and is counted; a prompt over ``max_prompt_length`` is a bad row.

    >>> seq = TokenizedSequence(0, [1, 2], [3, 4])
    >>> seq.token_lists()
    [[1, 2], [3, 4]]
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io import DataError, Record
from ..report import DataReport, ExampleSet, OnBadRows, build_examples
from .format import TEMPLATE_COLUMNS, check_columns, check_text, tokenize, tokenize_completions
from .pairs import TokenizeSettings

SFT_COLUMNS = ("prompt", "completion", "messages", "text", *TEMPLATE_COLUMNS)


@dataclass
class TokenizedSequence:
    """One SFT example: ``prompt_ids`` are context, ``completion_ids`` are scored."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    source: str = ""
    row: int = 0

    def token_lists(self) -> list[list[int]]:
        return [self.prompt_ids, self.completion_ids]


def tokenize_sft_record(record: Record, tokenizer, settings: TokenizeSettings,
                        report: DataReport, index: int,
                        completion_only_loss: bool = True) -> TokenizedSequence:
    """Validate and tokenize one SFT row, raising :class:`DataError` for a bad one."""
    values = record.values
    check_columns(record, SFT_COLUMNS)
    if "text" in values and "completion" not in values and "messages" not in values:
        text = check_text(record, "text")
        if not isinstance(text, str):
            raise DataError(record.source, record.row, "text", "not a string: plain text rows "
                            "hold a string; use `messages` for a conversation")
        ids = tokenize(tokenizer, text, True)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) < 2:
            raise DataError(record.source, record.row, "text", "empty field: fewer than 2 tokens")
        report.truncated_completions += len(ids) > settings.max_length
        ids = ids[:settings.max_length]
        return TokenizedSequence(index, ids[:1], ids[1:], record.source, record.row)
    if "messages" in values:
        messages = check_text(record, "messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise DataError(record.source, record.row, "messages",
                            "a conversation needs at least a prompt message and a reply")
        if messages[-1].get("role") != "assistant":
            raise DataError(record.source, record.row, f"messages[{len(messages) - 1}]",
                            "the last message is the completion and must be the assistant's")
        prompt, completion = messages[:-1], messages[-1:]
    else:
        if "completion" not in values:
            raise DataError(record.source, record.row, "completion", "missing column: an SFT "
                            "row has `prompt` + `completion`, `messages` or `text` "
                            f"(columns present: {sorted(values)})")
        prompt, completion = check_text(record, "prompt"), check_text(record, "completion")
    prompt_ids, (completion_ids,), truncated = tokenize_completions(
        record, tokenizer, prompt, [("completion", completion)], settings.max_length,
        settings.max_prompt_length, settings.chat_template_for_strings)
    report.truncated_completions += truncated
    if not completion_only_loss:  # score the prompt's tokens too (all but the first)
        prompt_ids, completion_ids = prompt_ids[:1], prompt_ids[1:] + completion_ids
    return TokenizedSequence(index, prompt_ids, completion_ids, record.source, record.row)


def build_sequences(records: list[Record], tokenizer, settings: TokenizeSettings,
                    on_bad_rows: OnBadRows = "error", completion_only_loss: bool = True,
                    skipped: list[DataError] | None = None) -> ExampleSet:
    """Tokenize every SFT record (bad rows raise, or are skipped and counted)."""
    return build_examples(records, lambda r, rep, i: tokenize_sft_record(
        r, tokenizer, settings, rep, i, completion_only_loss), on_bad_rows, unit="sequences",
        skipped=skipped)
