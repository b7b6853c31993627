"""Per-row ``tools`` and ``chat_template_kwargs`` reach the chat template, and the
prompt/completion boundary stays exact on a template with a thinking block."""

from __future__ import annotations

import copy

import pytest
from helpers import records

from dpokit.data.io import DataError
from dpokit.data.text import TokenizeSettings, build_pairs, build_sequences

# Qwen3-like: an assistant turn in a conversation carries an (empty) think block; the
# generation prompt carries it only when enable_thinking is false; tools become a system turn.
THINKING_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\nTools: ' + (tools | tojson) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
SETTINGS = TokenizeSettings(max_length=256, max_prompt_length=200, chat_template_for_strings=True)


@pytest.fixture()
def thinking_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = THINKING_TEMPLATE
    return tok


def decoded(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_enable_thinking_false_keeps_the_think_block_out_of_the_completion(thinking_tokenizer):
    row = {"prompt": "name a fruit", "chosen": "an apple", "rejected": "a rock",
           "chat_template_kwargs": {"enable_thinking": False}}
    pair = build_pairs(records([row]), thinking_tokenizer, SETTINGS)[0]
    prompt = decoded(thinking_tokenizer, pair.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert decoded(thinking_tokenizer, pair.chosen_ids) == "an apple<|im_end|>"
    assert decoded(thinking_tokenizer, pair.rejected_ids) == "a rock<|im_end|>"

    plain = build_pairs(records([{k: v for k, v in row.items()
                                  if k != "chat_template_kwargs"}]), thinking_tokenizer,
                        SETTINGS)[0]
    # without the row's kwargs the think block would be trained on as part of the answer
    assert decoded(thinking_tokenizer, plain.chosen_ids).startswith("<think>")


def test_tools_reach_the_prompt_only(thinking_tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    row = {"prompt": [{"role": "user", "content": "weather?"}],
           "completion": [{"role": "assistant", "content": "sunny"}], "tools": tools,
           "chat_template_kwargs": {"enable_thinking": False}}
    seq = build_sequences(records([row]), thinking_tokenizer, SETTINGS)[0]
    prompt = decoded(thinking_tokenizer, seq.prompt_ids)
    assert prompt.startswith("<|im_start|>system\nTools: [{") and "get_weather" in prompt
    assert decoded(thinking_tokenizer, seq.completion_ids) == "sunny<|im_end|>"


@pytest.mark.parametrize("field,value,message", [
    ("tools", "get_weather", "expected a list of tool schemas"),
    ("chat_template_kwargs", ["enable_thinking"], "expected an object"),
    ("chat_template_kwargs", {"add_generation_prompt": True},
     "'add_generation_prompt' is set by dpokit"),
])
def test_bad_template_inputs_are_named(thinking_tokenizer, field, value, message):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", field: value}
    with pytest.raises(DataError, match=rf"mem.jsonl, row 1, field '{field}': {message}"):
        build_pairs(records([row]), thinking_tokenizer, SETTINGS)
