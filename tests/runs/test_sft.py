"""SFT on the generic loop: row formats and their exact boundaries, padding-free packing
against its padded twin, token-count normalization, held-out NLL on a tiny model, and
SFT then DPO through the CLI."""

import json
import re

import pytest
import torch
from conftest import CORPUS, make_tiny_llama, sentiment_rows, write_jsonl
from helpers import BF16, records, tiny_sft_trainer

from dpokit.cli import main
from dpokit.data import DataError
from dpokit.data.text import (
    SequenceCollator,
    TokenizedSequence,
    TokenizeSettings,
    build_sequences,
    collate_sequences,
)
from dpokit.policies.causal_lm import CausalLMPolicy


def ids(tok, text, special=False):
    return tok(text, add_special_tokens=special)["input_ids"]


def one(tokenizer, row, **kw):
    return build_sequences(records([row]), tokenizer, TokenizeSettings(), **kw)[0]


def test_prompt_completion_boundary_and_completion_only_scoring(tokenizer):
    s = one(tokenizer, {"prompt": "the movie was", "completion": " wonderful"})
    assert s.prompt_ids == ids(tokenizer, "the movie was", special=True)
    assert s.completion_ids == ids(tokenizer, " wonderful") + [tokenizer.eos_token_id]
    batch = collate_sequences([s], tokenizer.pad_token_id)
    assert batch.score_target.tolist() == s.completion_ids  # only the completion is scored
    assert torch.equal(batch.input_ids.view(-1)[batch.score_source + 1], batch.score_target)
    full = one(tokenizer, {"prompt": "the movie was", "completion": " wonderful"},
               completion_only_loss=False)
    assert full.prompt_ids + full.completion_ids == s.prompt_ids + s.completion_ids
    assert len(full.prompt_ids) == 1  # every token but the first is scored


def test_conversation_scores_the_last_assistant_turn(tokenizer):
    row = {"messages": [{"role": "user", "content": "write one sentence"},
                        {"role": "assistant", "content": "a charming story"}]}
    s = one(tokenizer, row)
    prompt_text = "<|im_start|>user\nwrite one sentence<|im_end|>\n<|im_start|>assistant\n"
    assert s.prompt_ids == ids(tokenizer, prompt_text)
    assert s.completion_ids == ids(tokenizer, "a charming story<|im_end|>")
    same = one(tokenizer, {"prompt": row["messages"][:1], "completion": row["messages"][1:]})
    assert (same.prompt_ids, same.completion_ids) == (s.prompt_ids, s.completion_ids)


def test_plain_text_scores_every_token_but_the_first(tokenizer):
    s = one(tokenizer, {"text": "the film was dull"})
    assert s.prompt_ids + s.completion_ids == ids(tokenizer, "the film was dull", True) + [
        tokenizer.eos_token_id]
    assert len(s.prompt_ids) == 1


@pytest.mark.parametrize("row,field,reason", [
    ({"prompt": "p"}, "completion", "missing column"),
    ({"prompt": "p", "completion": "  "}, "completion", "empty field"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "at least a prompt"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
     "messages[1]", "must be the assistant's"),
    ({"text": 3}, "text", "not a string"),
])
def test_bad_sft_rows_name_row_and_field(tokenizer, row, field, reason):
    with pytest.raises(DataError, match=rf"mem.jsonl, row 1, field '{re.escape(field)}'.*{reason}"):
        one(tokenizer, row)


def _values_and_grads(layout, model, seqs):
    model.zero_grad()
    batch = collate_sequences(seqs, 0, layout)
    scores = CausalLMPolicy(model, chunk_size=3, attention_impl="sdpa_segments").logps(batch)
    (scores.logps * torch.linspace(0.5, 1.5, len(seqs))).sum().backward()
    return scores.logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_sft_matches_padded_values_and_gradients():
    seqs = [TokenizedSequence(0, [5, 6, 7], [8, 9, 2]), TokenizedSequence(1, [5], [11, 12, 2]),
            TokenizedSequence(2, [5, 6, 7, 8, 9, 10], [15]), TokenizedSequence(3, [30], [31, 2])]
    model = make_tiny_llama(64)
    plain, plain_grads = _values_and_grads("padded", model, seqs)
    packed, packed_grads = _values_and_grads("packed", model, seqs)
    assert collate_sequences(seqs, 0, "packed").input_ids.shape[0] < len(seqs)  # really packed
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(packed_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4)


def _rows(n=16):
    return [{"prompt": "write one sentence from a movie review", "completion": " " + c}
            for c in (CORPUS * 3)[:n]]


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_accumulation_and_packing_normalize_by_tokens(tmp_path, tokenizer, precision):
    """8 sequences of different lengths as 1x8, 2x4 and 8x1, packed or padded: one gradient.
    A per-sequence or per-micro-batch mean would not match. In bf16 to BF16 of a value or of
    a gradient's largest element (tests/helpers.py: each micro-batch, each layout, rounds its
    own partial gradients)."""
    grads = []
    for i, (batch_size, accum, layout) in enumerate(
            [(8, 1, "packed"), (4, 2, "packed"), (1, 8, "padded")]):
        trainer = tiny_sft_trainer(tmp_path / str(i), tokenizer, _rows(8), batch_size=batch_size,
                                   grad_accum_steps=accum, batch_layout=layout, max_steps=1,
                                   mixed_precision=precision)
        assert trainer.precision == {"no": "fp32", "bf16": "bf16"}[precision]
        trainer.policy.model.zero_grad()
        seen = {}

        def keep(opt, args, kwargs, seen=seen):
            seen.update({id(p): p.grad.clone() for g in opt.param_groups for p in g["params"]})

        inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        inner.register_step_pre_hook(keep)
        metrics = trainer._train_step()
        names = {id(p): n for n, p in trainer.policy.model.named_parameters()}
        grads.append(({names[k]: v for k, v in seen.items()}, metrics["loss"]))
    (g0, loss0), *others = grads
    for g, loss in others:
        assert loss == pytest.approx(loss0, rel=1e-5 if precision == "no" else BF16)
        for name in g0:
            atol = 1e-6 if precision == "no" else BF16 * float(g0[name].abs().max())
            torch.testing.assert_close(g[name], g0[name], atol=atol,
                                       rtol=1e-4 if precision == "no" else BF16)


@pytest.mark.parametrize("lora", [False, True])
def test_sft_lowers_held_out_completion_nll(tmp_path, tokenizer, lora):
    train = _rows(16)
    held_out = [{"prompt": "write one sentence from a movie review", "completion": " " + c}
                for c in ("the acting was wonderful", "a dull and silly film")]
    trainer = tiny_sft_trainer(tmp_path, tokenizer, train, held_out, lora=lora,
                               learning_rate=1e-2 if lora else 3e-3, num_epochs=8, batch_size=4)
    before = trainer.evaluate()["eval/loss"]
    result = trainer.train()
    after = result.eval_history[-1]["eval/loss"]
    # nats per completion token; LoRA on a random tiny model (frozen random head) learns slowly
    assert after < before - (0.1 if lora else 1.0), (before, after)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    keys = {"loss", "tokens_per_sequence", "tokens_per_s", "examples_per_s"}
    assert keys <= result.history[0].keys()


@pytest.mark.any_precision  # (the policy and its reference compute the same: log 2 in any)
def test_sft_then_dpo_through_the_cli(tmp_path, tiny_model_dir, capsys):
    """`dpokit sft` with LoRA writes an adapter; `dpokit train model=<that adapter>` trains
    that adapter further against a frozen copy of it (reference adapter_copy)."""
    sft_data = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"prompt": r["prompt"], "completion": r["chosen"]} for r in sentiment_rows(1)],
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    common = [
        "progress_bar=false",
        "log_with=[]",
        "lora=true",
        "lora_r=4",
        "batch_size=4",
        f"ref_cache_dir={tmp_path / 'cache'}",
    ]
    assert (
        main(
            [
                "sft",
                f"model={tiny_model_dir}",
                f"train_data={sft_data}",
                "max_steps=3",
                "learning_rate=1e-2",
                f"output_dir={tmp_path / 'sft'}",
                *common,
            ]
        )
        == 0
    )
    adapter = tmp_path / "sft" / "final"
    assert (adapter / "adapter_config.json").is_file()
    assert "supervised fine-tuning, 3 steps" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                f"model={adapter}",
                f"train_data={pairs}",
                "max_steps=2",
                "learning_rate=1e-3",
                f"output_dir={tmp_path / 'dpo'}",
                *common,
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "dpo/metrics.jsonl").read_text().splitlines()]
    # step 1 starts at the reference: the SFT adapter itself, so every log-ratio is 0
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "dpo/final/adapter_config.json").is_file()


def test_sft_collator_key_names_layout():
    assert SequenceCollator(0, "padded").key == "sequences:padded:0:None"
