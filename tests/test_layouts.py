"""Packing and prefix sharing against the plain padded layout: values and gradients.

Tolerance: fp32, 1e-5 absolute on per-sequence log-probs and parameter gradients (the layouts
change only summation order inside attention and matmuls).
"""

import pytest
import torch
from conftest import make_tiny_llama
from helpers import tiny_trainer

from dpokit.data import TokenizedPair, collate_pairs
from dpokit.policy import CausalLMPolicy

# very different lengths: one-token prompt, 12-token completion, 1-token completion
PAIRS = [
    TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2]),
    TokenizedPair(1, [5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 2], [22]),
    TokenizedPair(2, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 2]),
    TokenizedPair(3, [30, 31], [32, 33, 34, 35, 2], [36, 37, 38, 39, 40, 41, 2]),
]


def logps_and_grads(model, batch):
    model.zero_grad()
    out = CausalLMPolicy(model, chunk_size=5).logps(batch)
    values = torch.cat([out.chosen, out.rejected])
    weights = torch.linspace(0.5, 1.5, values.shape[0])  # distinct upstream grads per sequence
    (values * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return values.detach(), torch.cat([out.chosen_tokens, out.rejected_tokens]), grads


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
@pytest.mark.parametrize("n_pairs,max_row_tokens", [(1, None), (4, None), (4, 64), (4, 1)])
def test_layout_matches_padded(layout, n_pairs, max_row_tokens):
    model = make_tiny_llama(64)
    pairs = PAIRS[:n_pairs]
    plain = logps_and_grads(model, collate_pairs(pairs, 0, "padded"))
    batch = collate_pairs(pairs, 0, layout, max_row_tokens=max_row_tokens)
    fast = logps_and_grads(model, batch)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-5, rtol=0)
    assert torch.equal(fast[1], plain[1])
    for name in plain[2]:
        torch.testing.assert_close(fast[2][name], plain[2][name], atol=1e-5, rtol=1e-4)


def test_packing_removes_padding_and_prefix_sharing_runs_the_prompt_once():
    pairs = PAIRS
    unique = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.prompt_ids) + len(p.rejected_ids)
                 for p in pairs)
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


def test_sibling_completion_cannot_leak():
    model = make_tiny_llama(64)
    a = collate_pairs([TokenizedPair(0, [5, 6], [7, 8, 9], [10, 2])], 0, "prefix_shared")
    b = collate_pairs([TokenizedPair(0, [5, 6], [30, 31, 32], [10, 2])], 0, "prefix_shared")
    with torch.no_grad():
        ra = CausalLMPolicy(model).logps(a).rejected
        rb = CausalLMPolicy(model).logps(b).rejected
    torch.testing.assert_close(ra, rb, atol=0, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_training_trajectory_is_the_same_in_every_layout(tmp_path, tokenizer, lora):
    losses = {}
    for layout in ("padded", "packed", "prefix_shared"):
        trainer = tiny_trainer(tmp_path / layout, tokenizer, lora=lora, max_steps=4, batch_size=3,
                               batch_layout=layout, learning_rate=1e-2)
        losses[layout] = [m["loss"] for m in trainer.train().history]
    assert losses["padded"][-1] != pytest.approx(losses["padded"][0], rel=1e-3)
    for layout in ("packed", "prefix_shared"):
        assert losses[layout] == pytest.approx(losses["padded"], abs=2e-5)
