"""Rendering text rows for a tokenizer, with an exact prompt/completion boundary.

Prompt and completion are tokenized separately and concatenated, so the completion's tokens
are exactly those after the prompt's. Chat rows (message lists, or strings with
``chat_template_for_strings``) are rendered with the tokenizer's chat template; the completion
is what the template adds after the prompt rendered with ``add_generation_prompt``.

    >>> is_messages([{"role": "user", "content": "hi"}]), is_messages("hi")
    (True, False)
"""

from __future__ import annotations

from typing import Any

from ..io import DataError, Record, check_columns  # noqa: F401  (re-exported)

ROLES = frozenset({"system", "user", "assistant", "tool"})
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")  # per-row inputs of the chat template


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def check_text(record: Record, name: str) -> Any:
    """The field ``name`` as a non-empty string or a list of well-formed messages."""
    if name not in record.values:
        raise DataError(record.source, record.row, name, f"missing column: {name!r} "
                        f"(columns present: {sorted(record.values)})")
    value = record.values[name]
    if is_messages(value):
        if not value:
            raise DataError(record.source, record.row, name, "empty field: no messages")
        for i, message in enumerate(value):
            if not isinstance(message.get("content"), str) or "role" not in message:
                raise DataError(record.source, record.row, f"{name}[{i}]",
                                "not a string: a message needs a 'role' and a string 'content'")
            role = message["role"]
            if not isinstance(role, str) or role not in ROLES:
                raise DataError(record.source, record.row, f"{name}[{i}].role",
                                f"unknown role {role!r}: chat templates know {sorted(ROLES)}")
            if not message["content"].strip():
                raise DataError(record.source, record.row, f"{name}[{i}].content",
                                "empty field: blank message content")
        return value
    if not isinstance(value, str):
        raise DataError(record.source, record.row, name,
                        f"not a string: got {type(value).__name__}")
    if not value.strip():
        raise DataError(record.source, record.row, name, "empty field")
    return value


def template_inputs(record: Record) -> dict[str, Any]:
    """A row's ``tools`` (a list of tool schemas) and ``chat_template_kwargs`` (e.g.
    ``{"enable_thinking": false}``), checked, as keyword arguments of the chat template."""
    values, inputs = record.values, {}
    tools = values.get("tools")
    if tools is not None:
        if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise DataError(record.source, record.row, "tools",
                            "expected a list of tool schemas (JSON objects)")
        inputs["tools"] = tools or None
    kwargs = values.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise DataError(record.source, record.row, "chat_template_kwargs",
                            "expected an object of template variables")
        clash = sorted(set(kwargs) & {"tools", "conversation", "tokenize",
                                      "add_generation_prompt"})
        if clash:
            raise DataError(record.source, record.row, "chat_template_kwargs",
                            f"{clash[0]!r} is set by dpokit, not by the row")
        inputs.update(kwargs)
    return inputs


def render(tokenizer, prompt: Any, completion: Any, record: Record, name: str,
           chat_template_for_strings: bool) -> tuple[str, str, bool, bool]:
    """Return (prompt_text, completion_text, add_special_tokens, ends_with_eos). The row's
    ``tools`` and ``chat_template_kwargs`` go to both renderings, so the prompt stays an exact
    prefix (a thinking template with ``enable_thinking: false`` puts its empty think block in
    the prompt, not in the trained completion)."""
    inputs = template_inputs(record)
    chat = (is_messages(prompt) or is_messages(completion) or chat_template_for_strings
            or bool(inputs))
    if not chat:
        return prompt, completion, True, False
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(record.source, record.row, name,
                        "conversational row, but the tokenizer has no chat template")
    prompt_msgs = prompt if is_messages(prompt) else [{"role": "user", "content": prompt}]
    completion_msgs = (completion if is_messages(completion)
                       else [{"role": "assistant", "content": completion}])
    prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False,
                                                add_generation_prompt=True, **inputs)
    full_text = tokenizer.apply_chat_template(prompt_msgs + completion_msgs, tokenize=False,
                                              **inputs)
    if not full_text.startswith(prompt_text):
        raise DataError(record.source, record.row, name, "the chat template does not render the "
                        "prompt as a prefix of prompt + completion")
    completion_text = full_text[len(prompt_text):]
    eos = tokenizer.eos_token
    ends_with_eos = bool(eos) and completion_text.rstrip().endswith(eos)
    if ends_with_eos:
        completion_text = completion_text.rstrip()  # drop the template's newline after EOS
    return prompt_text, completion_text, False, ends_with_eos


def tokenize(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def tokenize_completions(record: Record, tokenizer, prompt: Any, named: list[tuple[str, Any]],
                         max_length: int, max_prompt_length: int,
                         chat_template_for_strings: bool) -> tuple[list[int], list[list[int]], int]:
    """Tokenize one prompt and its completions; return (prompt ids, completion ids, number
    truncated). The prompt is checked against the length limits; completions are cut to fit
    and end with EOS (unless the chat template already ended them with it)."""
    prompt_ids: list[int] | None = None
    completions = []
    for name, completion in named:
        prompt_text, completion_text, special, has_eos = render(
            tokenizer, prompt, completion, record, name, chat_template_for_strings)
        ids = tokenize(tokenizer, prompt_text, special)
        if prompt_ids is None:
            prompt_ids = ids
        elif ids != prompt_ids:  # message-list completions could carry their own context
            raise DataError(record.source, record.row, name,
                            "completions render different prompts")
        completion_ids = tokenize(tokenizer, completion_text, False)
        if not has_eos and tokenizer.eos_token_id is not None:
            completion_ids.append(tokenizer.eos_token_id)
        completions.append(completion_ids)
    assert prompt_ids is not None
    if not prompt_ids:
        raise DataError(record.source, record.row, "prompt", "empty field: prompt has no tokens")
    if len(prompt_ids) > max_prompt_length:
        raise DataError(record.source, record.row, "prompt",
                        f"prompt too long: {len(prompt_ids)} tokens > max_prompt_length="
                        f"{max_prompt_length}")
    room = max_length - len(prompt_ids)
    if room < 1:
        raise DataError(record.source, record.row, "prompt",
                        f"prompt too long: {len(prompt_ids)} tokens leave no room in max_length="
                        f"{max_length}")
    truncated = sum(len(ids) > room for ids in completions)
    return prompt_ids, [ids[:room] for ids in completions], truncated
