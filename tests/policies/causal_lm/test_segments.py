"""Instructional Segment Embeddings (policies/causal_lm/segments.py): segment ids by hand, the
table against a hand-built forward, every batch layout equal to padded (values and the table's
gradient), zero at the start, the reference untouched under LoRA, saved and loaded again."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama, write_jsonl

from dpokit.data.text import TokenizedPair, collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy
from dpokit.policies.causal_lm.lora import apply_lora
from dpokit.policies.causal_lm.segments import (
    MODULE,
    SegmentSpec,
    install_segments,
    segment_ids,
    token_lookup,
)

M1, M2, RESET = 60, 61, 62  # marker of segment 1, of segment 2, a turn's start
SPEC = SegmentSpec(("<m1>", "<m2>"), ("<reset>",))


class Tokens:
    """The three tokens of SPEC as ids of the tiny vocabulary (what install needs)."""

    ids = {"<m1>": M1, "<m2>": M2, "<reset>": RESET}

    def encode(self, text, add_special_tokens=False):
        return [self.ids[text]] if text in self.ids else [1, 2]


PAIRS = [  # markers in prompts; one prompt ends inside segment 1, one chosen answer holds M2
    TokenizedPair(0, [RESET, 5, M1, 6, 7, M2, 8, RESET, 9], [11, 12, 2], [13, 2]),
    TokenizedPair(1, [M1, 5, 6], [7, 8, M2, 9, 2], [10, 2]),
    TokenizedPair(2, [5, 6], [14, 2], [15, 16, 17, 2]),
]


def test_segment_ids_by_hand():
    lookup = token_lookup(Tokens(), SPEC, 64)
    ids = torch.tensor([[RESET, 5, M1, 6, M2, 7, RESET, 8, 9]])
    assert segment_ids(ids, lookup).tolist() == [[0, 0, 1, 1, 2, 2, 0, 0, 0]]
    # a packed row: the second sequence (position 0) starts in segment 0 without a reset token
    ids, pos = torch.tensor([[M1, 5, 6, 7, 8]]), torch.tensor([[0, 1, 2, 0, 1]])
    assert segment_ids(ids, lookup, pos).tolist() == [[1, 1, 1, 0, 0]]
    assert segment_ids(ids, lookup).tolist() == [[1, 1, 1, 1, 1]]


def test_a_marker_that_is_not_one_token_is_refused():
    with pytest.raises(ValueError, match="'<x>' is not one token"):
        token_lookup(Tokens(), SegmentSpec(("<x>",)), 64)


def _installed(seed: int = 0, scale: float = 0.0):
    model = make_tiny_llama(64, seed=seed)
    table = install_segments(model, Tokens(), SPEC)
    if scale:
        with torch.no_grad():
            table.table.weight.copy_(torch.randn(3, 32) * scale)
    return model, table


def _values_and_grads(model, layout, impl="mask"):
    model.zero_grad()
    out = CausalLMPolicy(model, chunk_size=5, attention_impl=impl).logps(
        collate_pairs(PAIRS, 0, layout)).pairs()
    values = torch.cat([out.chosen, out.rejected])  # (2B,)
    (values * torch.linspace(0.5, 1.5, values.shape[0])).sum().backward()
    table = model.model.segment_embedding.table.weight.grad.clone()
    return values.detach(), table


def test_the_table_is_added_to_each_tokens_input_embedding():
    """The policy's log-prob of pair 0's chosen answer against a forward built by hand: input
    embeddings plus the table row of the segment read off by eye."""
    model, table = _installed(scale=0.5)
    got = CausalLMPolicy(model, chunk_size=5, attention_impl="mask").logps(
        collate_pairs(PAIRS[:1], 0, "padded")).pairs().chosen[0]
    pair = PAIRS[0]
    ids = torch.tensor([pair.prompt_ids + pair.chosen_ids])
    by_eye = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 0, 0, 0, 0, 0]])  # the answer: segment 0
    embeds = model.get_input_embeddings()(ids) + table.table.weight[by_eye]
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits[0, :-1]  # (T-1, V)
    logps = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    want = logps[len(pair.prompt_ids) - 1:].sum()
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["mask", "sdpa_segments"])
@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
def test_layouts_match_padded_values_and_table_gradient(layout, impl):
    plain = _values_and_grads(_installed(scale=0.5)[0], "padded")
    fast = _values_and_grads(_installed(scale=0.5)[0], layout, impl)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast[1], plain[1], atol=1e-5, rtol=1e-4)
    assert plain[1].abs().sum() > 0


def test_zero_at_the_start_and_the_reference_untouched_under_lora():
    bare = make_tiny_llama(64)
    start = CausalLMPolicy(bare, chunk_size=5).logps(collate_pairs(PAIRS, 0, "padded")).pairs()
    model, _ = _installed()
    model = apply_lora(model, r=4, alpha=8, modules_to_save=[MODULE])
    policy = CausalLMPolicy(model, chunk_size=5, reference="adapter")
    batch = collate_pairs(PAIRS, 0, "prefix_shared")
    torch.testing.assert_close(policy.logps(batch).pairs().chosen, start.chosen, atol=1e-5,
                               rtol=0)
    trained = [n for n in policy.named_trainable_parameters() if MODULE in n]
    assert trained, "the table trains under LoRA"
    with torch.no_grad():
        dict(model.named_parameters())[trained[0]].add_(0.7)
    moved = policy.logps(batch).pairs()
    reference = policy.reference_logps(batch).pairs()
    assert (moved.chosen - start.chosen).abs().max() > 1e-3
    torch.testing.assert_close(reference.chosen, start.chosen, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["adapter", "full", "merged"])
def test_trained_saved_and_loaded_again(tmp_path, tokenizer, kind):
    """`dpokit train` with marker tokens as segments: final/ holds the trained table with
    segments.json, and `dpokit eval final/` (the loader installs the table again) gives the
    run's last evaluation; a full (or merged) model's reference: the base it started from."""
    lora = kind != "full"
    from dpokit.cli import main

    base = _tiny_with_markers(tmp_path, tokenizer)
    rows = [{"prompt": f"<m1> be brief <m2> {x} <|im_start|> now", "chosen": " ok",
             "rejected": f" {x} {x} {x}"} for x in ("cats", "dogs", "rain", "tea")]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "run"
    assert main(["train", f"model={base}", f"train_data={data}", f"eval_data={data}",
                 f"output_dir={out}", "max_steps=4", "batch_size=4", "learning_rate=5e-2",
                 "eval_every=4", "eval_before=true", f"lora={str(lora).lower()}",
                 f"merge_adapter={str(kind == 'merged').lower()}",
                 "model.segment_tokens=[<m1>,<m2>]", "model.segment_reset_tokens=[<|im_start|>]",
                 "progress_bar=false", "log_with=[]", "max_length=64",
                 "max_prompt_length=48", "mixed_precision=no"]) == 0
    final = out / "final"
    assert json.loads((final / "segments.json").read_text()) == {
        "markers": ["<m1>", "<m2>"], "reset": ["<|im_start|>"]}
    held = [json.loads(x)["eval/loss"] for x in (out / "metrics.jsonl").open()
            if "eval/loss" in x]
    assert held[-1] < held[0] - 1e-3  # trained
    figures = tmp_path / "eval.json"
    assert main(["eval", str(final), "--pairs", str(data), "--max-length", "64",
                 "--max-prompt-length", "48", "--no-chat-template", "--json", str(figures),
                 *([] if kind == "adapter" else ["--reference", str(base)])]) == 0
    assert json.loads(figures.read_text())["eval/loss"] == pytest.approx(held[-1], abs=1e-5)
    if kind == "full":  # the same weights without their table score otherwise: it was trained
        (final / "segments.json").unlink()
        assert main(["eval", str(final), "--pairs", str(data), "--max-length", "64",
                     "--max-prompt-length", "48", "--no-chat-template", "--json", str(figures),
                     "--reference", str(base)]) == 0
        assert abs(json.loads(figures.read_text())["eval/loss"] - held[-1]) > 1e-4


def _tiny_with_markers(tmp_path, tokenizer):
    """The tiny tokenizer with two marker tokens added, and a tiny Llama of that vocabulary."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    tokenizer.save_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_special_tokens({"additional_special_tokens": ["<m1>", "<m2>"]})
    tok.save_pretrained(base)
    make_tiny_llama(len(tok)).save_pretrained(base)
    return base


def test_configured_and_saved_segments_must_agree(tmp_path):
    from dpokit.config.schema import ModelConfig
    from dpokit.runs.causal_lm import segment_spec

    SPEC.write(tmp_path)
    assert segment_spec(ModelConfig(name=str(tmp_path))) == SPEC
    with pytest.raises(ValueError, match="was trained with"):
        segment_spec(ModelConfig(name=str(tmp_path), segment_tokens=["<m1>"]))
    with pytest.raises(ValueError, match="goes with model.segment_tokens"):
        segment_spec(ModelConfig(segment_reset_tokens=["<reset>"]))
