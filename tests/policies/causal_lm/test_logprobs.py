"""The chunked LM head against its plain twin, and the policy forward against HF logits.

Tolerances: fp32 values and gradients agree to 1e-5 (relative 1e-5); bf16 matmuls agree with
the fp32 plain path to 5e-2 per token log-prob (bf16 has an 8-bit mantissa).
"""

import pytest
import torch
from conftest import completion_mask

from dpokit.data.text import TokenizedPair, collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy
from dpokit.policies.causal_lm.logprobs import token_logps_chunked, token_logps_plain


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
def test_chunked_matches_plain_values_and_grads(chunk_size):
    torch.manual_seed(0)
    h = torch.randn(17, 12, requires_grad=True)
    w = torch.randn(40, 12, requires_grad=True)
    t = torch.randint(0, 40, (17,))
    upstream = torch.randn(17)
    a = token_logps_chunked(h, w, t, chunk_size=chunk_size)
    b = token_logps_plain(h, w, t)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad((a * upstream).sum(), (h, w))
    gb = torch.autograd.grad((b * upstream).sum(), (h, w))
    for x, y in zip(ga, gb, strict=False):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_chunked_frozen_head_and_empty_input():
    torch.manual_seed(0)
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)  # frozen (LoRA): no weight gradient computed
    out = token_logps_chunked(h, w, torch.tensor([1, 2, 3, 4, 5]), chunk_size=2)
    out.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    empty = token_logps_chunked(torch.zeros(0, 8), w, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


def test_chunked_bf16_close_to_fp32():
    torch.manual_seed(0)
    h, w, t = torch.randn(9, 32), torch.randn(50, 32) * 0.2, torch.randint(0, 50, (9,))
    low = token_logps_chunked(h, w, t, chunk_size=4, compute_dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, token_logps_plain(h, w, t), atol=5e-2, rtol=0)


def _pairs():
    return [
        TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2]),
        TokenizedPair(1, [5], [11, 12, 13, 14, 15, 2], [16, 2]),  # very different lengths
        TokenizedPair(2, [5, 6, 7, 8, 9, 10, 11], [12, 2], [13, 14, 2]),
    ]


def _reference_logps(model, batch):
    """Naive: the HF forward's full logits, log_softmax, completion tokens only."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(2, batch.input_ids[:, 1:, None]).squeeze(2)
    return (logp * completion_mask(batch)[:, 1:]).sum(1)


@pytest.mark.parametrize("impl", ["chunked", "plain"])
@pytest.mark.parametrize("n_pairs", [1, 3])
def test_policy_logps_match_hf_forward_values_and_grads(tiny_llama, impl, n_pairs):
    batch = collate_pairs(_pairs()[:n_pairs], pad_token_id=0)
    policy = CausalLMPolicy(tiny_llama, reference="none", logprob_impl=impl, chunk_size=4)
    out = policy.logps(batch).pairs()
    ours = torch.cat([out.chosen, out.rejected])
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in tiny_llama.parameters()]
    tiny_llama.zero_grad()
    naive = _reference_logps(tiny_llama, batch)
    naive.sum().backward()
    torch.testing.assert_close(ours, naive, atol=1e-5, rtol=1e-5)
    for g, p in zip(ours_grads, tiny_llama.parameters(), strict=False):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    expected_counts = torch.tensor([len(p.chosen_ids) for p in _pairs()[:n_pairs]])
    assert torch.equal(out.chosen_tokens, expected_counts)


def test_reference_copy_is_frozen_and_adapter_disabled_equals_base(tiny_llama):
    from peft import LoraConfig, get_peft_model

    batch = collate_pairs(_pairs(), pad_token_id=0)
    base = CausalLMPolicy(tiny_llama, reference="none").logps(batch).pairs()
    lora = get_peft_model(
        tiny_llama, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    policy = CausalLMPolicy(lora, reference="adapter")
    ref = policy.reference_logps(batch).pairs()
    torch.testing.assert_close(ref.chosen, base.chosen.detach())
    assert not torch.allclose(policy.logps(batch).pairs().chosen, ref.chosen)  # adapter is active
    assert lora.training  # the reference pass restored the training mode


def test_token_stats_chunked_equal_plain_and_full_softmax():
    """Entropy and argmax accuracy from the chunked head equal the plain twin's and a full
    softmax computed by hand."""
    from dpokit.policies.causal_lm.logprobs import token_logps_chunked, token_logps_plain

    torch.manual_seed(0)
    h, w = torch.randn(13, 8), torch.randn(40, 8)
    targets = torch.randint(0, 40, (13,))
    targets[:4] = (h[:4] @ w.T).argmax(-1)  # some positions predicted right
    chunked, plain = torch.zeros(13, 2), torch.zeros(13, 2)
    token_logps_chunked(h, w, targets, chunk_size=4, stats=chunked)
    token_logps_plain(h, w, targets, stats=plain)
    probs = torch.softmax(h @ w.T, -1)
    entropy = -(probs * probs.log()).sum(-1)
    correct = ((h @ w.T).argmax(-1) == targets).float()
    assert torch.allclose(chunked, plain, atol=1e-5)
    assert torch.allclose(chunked[:, 0], entropy, atol=1e-4)
    assert torch.equal(chunked[:, 1], correct) and correct[:4].sum() == 4


def test_objectives_report_token_entropy_and_accuracy(tokenizer):
    from conftest import make_tiny_llama
    from helpers import tiny_pairs

    from dpokit.data.text import PairCollator
    from dpokit.losses import LossParams
    from dpokit.objectives import PreferenceObjective
    from dpokit.policies.causal_lm import CausalLMPolicy

    policy = CausalLMPolicy(make_tiny_llama(len(tokenizer)), tokenizer)
    batch = PairCollator(tokenizer.pad_token_id)(tiny_pairs(tokenizer).pairs[:4])
    objective = PreferenceObjective.from_names("sigmoid", None, LossParams())
    means = objective(policy, batch, torch.zeros(8)).metrics.means()
    scored = int(batch.score_target.shape[0])
    assert 0 < means["entropy"] <= float(torch.log(torch.tensor(len(tokenizer)))) + 1e-4
    assert 0 <= means["mean_token_accuracy"] <= 1
    with torch.no_grad():
        scores = policy.logps(batch)
    assert int(scores.tokens.sum()) == scored and scores.entropy is not None
