"""Every attention backend against the dense 4-D mask: values and gradients (GQA and MHA, packed
and prefix-shared rows, padding), and one kernel call per layer whatever the segment count.

On the CPU: ``sdpa_segments`` and ``mask`` run as they are; ``flash_varlen`` runs its index
plumbing with a reference varlen kernel (:func:`reference_varlen`, flash-attn's semantics
written with SDPA; the real kernel runs in ``bench/gpu_run.sh``); ``flex`` runs forward only
(torch has no FlexAttention backward on the CPU). Tolerance: fp32, 1e-5.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama

from dpokit.config.schema import ATTENTION_IMPLS
from dpokit.data.text import TokenizedPair, collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy, attention, kernels
from dpokit.policies.causal_lm.attention import IMPLS, SegmentPlan, resolve_impl

PAIRS = [
    TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2]),
    TokenizedPair(1, [5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 2], [22]),
    TokenizedPair(2, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 2]),
    TokenizedPair(3, [30, 31], [32, 33, 34, 35, 2], [36, 37, 38, 39, 40, 41, 2]),
    TokenizedPair(4, [40, 41, 42, 43], [44, 2], [45, 46, 47, 2]),
]

CALLS = {"varlen": 0}


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                     causal=False, window_size=(-1, -1), softcap=0.0):
    """flash_attn_varlen_func's contract written out: q (total_q, H, D), k / v (total_k, Hkv,
    D); sequence i is q[cu_q[i]:cu_q[i+1]] against k[cu_k[i]:cu_k[i+1]]; causal is aligned to
    the bottom-right (query j of Lq sees keys up to j + Lk - Lq), ``window_size=(left, right)``
    keeps keys from j + Lk - Lq - left on, ``softcap`` > 0 soft-caps the scores."""
    CALLS["varlen"] += 1
    outs = []
    for i in range(len(cu_q) - 1):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None]  # (1, H, Lq, D)
        ks = k[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None]  # (1, Hkv, Lk, D)
        vs = v[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None]
        lq, lk = qs.shape[2], ks.shape[2]
        aligned = torch.arange(lq)[:, None] + (lk - lq)  # (Lq, 1) each query's key position
        keys = torch.arange(lk)[None, :]  # (1, Lk)
        visible = keys <= aligned if causal else torch.ones(lq, lk, dtype=torch.bool)
        if window_size[0] >= 0:
            visible = visible & (keys >= aligned - window_size[0])  # (Lq, Lk)
        groups = qs.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        scores = qs @ ks.transpose(-1, -2) * (softmax_scale or qs.shape[-1] ** -0.5)
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        out = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ vs  # (1, H, Lq, D)
        outs.append(out[0].transpose(0, 1))  # (Lq, H, D)
    return torch.cat(outs)


@pytest.fixture()
def fake_flash(monkeypatch):
    monkeypatch.setattr(kernels, "varlen_kernel", lambda: reference_varlen)
    CALLS["varlen"] = 0


def scores(model, batch, impl, grads=True):
    model.zero_grad()
    policy = CausalLMPolicy(model, chunk_size=5, attention_impl=impl)
    with torch.set_grad_enabled(grads):
        out = policy.logps(batch)
    values = out.logps
    if not grads:
        return values, {}
    weights = torch.linspace(0.5, 1.5, values.shape[0])  # distinct upstream grads per sequence
    (values * weights).sum().backward()
    return values.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_config_offers_the_backends_the_policy_has():
    assert ATTENTION_IMPLS == IMPLS


@pytest.mark.parametrize("impl", ["sdpa_segments", "flash_varlen"])
@pytest.mark.parametrize("kv_heads", [2, 4])  # GQA and MHA
@pytest.mark.parametrize("layout,max_row_tokens", [("prefix_shared", None), ("packed", None),
                                                   ("prefix_shared", 20), ("packed", 1)])
def test_backend_equals_the_mask_in_values_and_gradients(fake_flash, impl, kv_heads, layout,
                                                         max_row_tokens):
    """max_row_tokens 20 / 1: several rows, so the shorter rows carry padding."""
    batch = collate_pairs(PAIRS, 0, layout, max_row_tokens=max_row_tokens)
    mask_values, mask_grads = scores(make_tiny_llama(64, num_key_value_heads=kv_heads), batch,
                                     "mask")
    values, grads = scores(make_tiny_llama(64, num_key_value_heads=kv_heads), batch, impl)
    torch.testing.assert_close(values, mask_values, atol=1e-5, rtol=0)
    for name in mask_grads:
        torch.testing.assert_close(grads[name], mask_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")  # eager: for debugging
@pytest.mark.parametrize("kv_heads", [2, 4])
@pytest.mark.parametrize("layout", ["prefix_shared", "packed"])
def test_flex_equals_the_mask_in_values(kv_heads, layout):
    """FlexAttention's BlockMask of the same rule (forward: no FlexAttention backward on CPU)."""
    batch = collate_pairs(PAIRS, 0, layout, max_row_tokens=20)
    model = make_tiny_llama(64, num_key_value_heads=kv_heads)
    mask_values, _ = scores(model, batch, "mask", grads=False)
    values, _ = scores(model, batch, "flex", grads=False)
    torch.testing.assert_close(values, mask_values, atol=1e-5, rtol=0)


def test_flex_training_on_the_cpu_is_refused_by_name():
    batch = collate_pairs(PAIRS[:2], 0, "prefix_shared")
    with pytest.raises(ValueError, match="no FlexAttention backward on the CPU"):
        scores(make_tiny_llama(64), batch, "flex")


def count_kernel_calls(monkeypatch, impl, n_pairs):
    """Attention kernel calls of one forward of ``n_pairs`` pairs, divided by the layers."""
    counts = {"n": 0, "inside": False}
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        counts["n"] += not counts["inside"]  # (the reference varlen kernel's own calls aside)
        return sdpa(*args, **kwargs)

    def counting_varlen(*args, **kwargs):
        counts["n"] += 1
        counts["inside"] = True
        try:
            return reference_varlen(*args, **kwargs)
        finally:
            counts["inside"] = False

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(kernels, "varlen_kernel", lambda: counting_varlen)
    pairs = [TokenizedPair(i, [5, 6, 7], [8, 9, 2], [10, 2]) for i in range(n_pairs)]
    batch = collate_pairs(pairs, 0, "prefix_shared", max_row_tokens=10_000)
    model = make_tiny_llama(64)
    CausalLMPolicy(model, attention_impl=impl)  # (registers the implementation)
    counts["n"] = 0
    with torch.no_grad():
        CausalLMPolicy(model, attention_impl=impl).logps(batch)
    return counts["n"] / model.config.num_hidden_layers


@pytest.mark.parametrize("impl,per_layer", [("mask", 1), ("flash_varlen", 2)])
def test_one_call_per_layer_whatever_the_number_of_segments(monkeypatch, impl, per_layer):
    """mask: one SDPA call per layer; flash_varlen: one over every prompt + first completion,
    one over every second completion. The per-segment twin grows with the pairs."""
    assert count_kernel_calls(monkeypatch, impl, 2) == per_layer
    assert count_kernel_calls(monkeypatch, impl, 12) == per_layer
    assert count_kernel_calls(monkeypatch, "sdpa_segments", 12) == 24  # the plain twin


def test_the_plan_is_built_once_per_batch_and_shared_by_the_layers(monkeypatch):
    built = []
    original = SegmentPlan.varlen

    def counting(self):
        built.append(id(self)) if "varlen" not in self._cache else None
        return original(self)

    monkeypatch.setattr(SegmentPlan, "varlen", counting)
    monkeypatch.setattr(kernels, "varlen_kernel", lambda: reference_varlen)
    batch = collate_pairs(PAIRS, 0, "prefix_shared")
    with torch.no_grad():
        CausalLMPolicy(make_tiny_llama(64), attention_impl="flash_varlen").logps(batch)
    assert len(built) == 1


def test_the_plan_mask_equals_the_collated_mask():
    """The rule the one-call backends build is the one the collator writes (real tokens)."""
    for layout in ("prefix_shared", "packed"):
        batch = collate_pairs(PAIRS, 0, layout, max_row_tokens=20)
        plan = SegmentPlan(batch.segments, batch.input_ids.shape[1])
        real = plan._tokens()[0] >= 0  # (R, T) not padding
        both = real[:, :, None] & real[:, None, :]
        assert torch.equal(plan.bool_mask()[:, 0] & both, batch.attention_mask[:, 0] & both)


@pytest.mark.parametrize("device,flash,expected", [("cpu", False, "sdpa_segments"),
                                                   ("mps", False, "sdpa_segments"),
                                                   ("cuda", False, "flex"),
                                                   ("cuda", True, "flash_varlen")])
def test_auto_picks_by_device(monkeypatch, device, flash, expected):
    monkeypatch.setattr(attention, "flash_attn_available", lambda: flash)
    assert resolve_impl("auto", device) == expected
    with pytest.raises(ValueError, match="attention_impl='fast'"):
        resolve_impl("fast", device)
