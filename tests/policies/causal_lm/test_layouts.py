"""Packing and prefix sharing against the plain padded layout: values and gradients.

Tolerance: fp32, 1e-5 absolute on per-sequence log-probs and parameter gradients (the layouts
change only summation order inside attention and matmuls).
"""

import dataclasses

import pytest
import torch
from conftest import make_tiny_llama
from helpers import tiny_trainer

from dpokit.data.text import TokenizedPair, collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy

# very different lengths: one-token prompt, 12-token completion, 1-token completion
PAIRS = [
    TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2]),
    TokenizedPair(1, [5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 2], [22]),
    TokenizedPair(2, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 2]),
    TokenizedPair(3, [30, 31], [32, 33, 34, 35, 2], [36, 37, 38, 39, 40, 41, 2]),
]


def logps_and_grads(model, batch, attention_impl="mask", **options):
    model.zero_grad()
    out = (
        CausalLMPolicy(model, chunk_size=5, attention_impl=attention_impl, **options)
        .logps(batch)
        .pairs()
    )
    values = torch.cat([out.chosen, out.rejected])
    weights = torch.linspace(0.5, 1.5, values.shape[0])  # distinct upstream grads per sequence
    (values * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return values.detach(), torch.cat([out.chosen_tokens, out.rejected_tokens]), grads


@pytest.mark.parametrize("attention_impl", ["mask", "sdpa_segments"])
@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
@pytest.mark.parametrize("n_pairs,max_row_tokens", [(1, None), (4, None), (4, 64), (4, 1)])
def test_layout_matches_padded(layout, n_pairs, max_row_tokens, attention_impl):
    """Both plain attention paths: the dense 4-D mask and per-segment SDPA (the one-call
    backends are checked against the mask in tests/test_attention.py)."""
    model = make_tiny_llama(64)
    pairs = PAIRS[:n_pairs]
    plain = logps_and_grads(make_tiny_llama(64), collate_pairs(pairs, 0, "padded"))
    batch = collate_pairs(pairs, 0, layout, max_row_tokens=max_row_tokens)
    fast = logps_and_grads(model, batch, attention_impl)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=0)
    assert torch.equal(fast[1], plain[1])
    for name in plain[2]:
        torch.testing.assert_close(fast[2][name], plain[2][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
@pytest.mark.parametrize("options", [{"sampo_seed": 5}, {"sampo_seed": 1, "ld_alpha": 0.5}])
def test_token_weights_match_padded_in_every_layout(layout, options):
    """SamPO's kept tokens (and LD-DPO's weights) depend on the pair and the token's place in
    its answer only, so every layout sums the same tokens: values and gradients."""
    plain = logps_and_grads(make_tiny_llama(64), collate_pairs(PAIRS, 0, "padded"), **options)
    unweighted = logps_and_grads(make_tiny_llama(64), collate_pairs(PAIRS, 0, "padded"))
    assert not torch.allclose(plain[0], unweighted[0])  # the weights do act
    fast = logps_and_grads(make_tiny_llama(64), collate_pairs(PAIRS, 0, layout, max_row_tokens=20),
                           "sdpa_segments", **options)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=0)
    for name in plain[2]:
        torch.testing.assert_close(fast[2][name], plain[2][name], atol=1e-5, rtol=1e-4)


def test_packing_removes_padding_and_prefix_sharing_runs_the_prompt_once():
    pairs = PAIRS
    unique = sum(
        len(p.prompt_ids) + len(p.chosen_ids) + len(p.prompt_ids) + len(p.rejected_ids)
        for p in pairs
    )
    padded = collate_pairs(pairs, 0, "padded")
    packed = collate_pairs(pairs, 0, "packed", max_row_tokens=10_000)
    shared = collate_pairs(pairs, 0, "prefix_shared", max_row_tokens=10_000)
    assert padded.input_ids.numel() > unique == padded.num_tokens
    assert packed.input_ids.numel() == unique == packed.num_tokens  # one row, no padding
    shared_tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert shared.input_ids.numel() == shared_tokens == shared.num_tokens
    assert shared.input_ids.shape[0] == 1


def test_prefix_shared_mask_and_positions():
    """[prompt | chosen | rejected]: rejected sees the prompt, not chosen; positions continue
    after the prompt for both completions."""
    batch = collate_pairs([TokenizedPair(0, [5, 6], [7, 8], [9, 10, 2])], 0, "prefix_shared")
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    mask = batch.attention_mask[0, 0]
    first_rejected = 4
    assert mask[first_rejected].tolist() == [True, True, False, False, True, False, False]
    assert mask[3].tolist() == [True, True, True, True, False, False, False]
    # first rejected token is scored from the last prompt token (index 1), not from chosen
    sources = batch.score_source[batch.score_sequence == 1].tolist()
    assert sources == [1, 4, 5]


@pytest.mark.parametrize("attention_impl", ["mask", "sdpa_segments"])
def test_sibling_completion_cannot_leak(attention_impl):
    model = make_tiny_llama(64)
    policy = CausalLMPolicy(model, attention_impl=attention_impl)
    a = collate_pairs([TokenizedPair(0, [5, 6], [7, 8, 9], [10, 2])], 0, "prefix_shared")
    b = collate_pairs([TokenizedPair(0, [5, 6], [30, 31, 32], [10, 2])], 0, "prefix_shared")
    with torch.no_grad():
        ra, rb = policy.logps(a).pairs().rejected, policy.logps(b).pairs().rejected
    torch.testing.assert_close(ra, rb, atol=0, rtol=0)


def test_segment_attention_falls_back_to_sdpa_without_a_plan():
    """Generation and padded batches carry no segment plan: plain SDPA, same logits."""
    model = make_tiny_llama(64).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        CausalLMPolicy(model, attention_impl="sdpa_segments")
        after = model(input_ids=ids).logits
        generated = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert model.config._attn_implementation == "sdpa"  # the name families branch on, kept
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert generated.shape == (1, 7)


@pytest.mark.parametrize("lora", [False, True])
def test_training_trajectory_is_the_same_in_every_layout(tmp_path, tokenizer, lora):
    losses = {}
    for layout, segments in (
        ("padded", "mask"),
        ("packed", "mask"),
        ("prefix_shared", "mask"),
        ("packed", "sdpa_segments"),
        ("prefix_shared", "sdpa_segments"),
    ):
        trainer = tiny_trainer(
            tmp_path / f"{layout}{segments}",
            tokenizer,
            lora=lora,
            max_steps=4,
            batch_size=3,
            batch_layout=layout,
            learning_rate=1e-2,
            attention_impl=segments,
        )
        losses[layout, segments] = [m["loss"] for m in trainer.train().history]
    plain = losses["padded", "mask"]
    assert plain[-1] != pytest.approx(plain[0], rel=1e-3)
    for key, values in losses.items():
        assert values == pytest.approx(plain, abs=2e-5), key


def test_layouts_match_padded_on_absolute_position_embeddings():
    """GPT-2 adds learned absolute position embeddings: positions that do not restart per
    packed sequence (invisible on RoPE models, where only differences matter) change every
    value here."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpokit.data.text import collate_pairs

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=128, attn_implementation="sdpa",
                                       resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    plain = logps_and_grads(model, collate_pairs(PAIRS, 0, "padded"))
    for layout in ("packed", "prefix_shared"):
        batch = collate_pairs(PAIRS, 0, layout, max_row_tokens=64)
        fast = logps_and_grads(model, batch)
        torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=1e-5)
        for key in plain[2]:
            torch.testing.assert_close(fast[2][key], plain[2][key], atol=1e-5, rtol=1e-4)
        shifted = dataclasses.replace(batch, position_ids=torch.arange(
            batch.input_ids.shape[1]).expand_as(batch.input_ids))  # the planted bug
        assert not torch.allclose(logps_and_grads(model, shifted)[0], plain[0], atol=1e-3)


def test_the_config_offers_exactly_the_layouts_the_collators_build():
    """config/schema.py declares the batch_layout choices (config may not import the text
    modality): the collators' own list, and auto (resolved per model by the run builder)."""
    from dpokit.config.schema import LAYOUTS as OFFERED
    from dpokit.data.text.collate import LAYOUTS
    from dpokit.policies.causal_lm.families import LAYOUTS as JUDGED

    assert OFFERED == ("auto", *LAYOUTS) and JUDGED == LAYOUTS
