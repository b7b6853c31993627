"""The model zoo itself (zoo.py): every causal-LM type of transformers is in it or refused with a
reason, its pairs run past every window, and its ground truth is sound: deterministic for a seed,
causal, and the same under the family's SDPA path as under eager attention.

Gradient tolerance: 1e-5 + 1e-4 * the tensor's largest gradient. The Gemma 3n / 4 families
(embeddings scaled by sqrt(hidden)) have gradients up to ~70, where fp32 eager itself is 2e-3 off
a float64 run; a per-element rtol alone would fail them on rounding.
"""

import pytest
import torch
import zoo


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    for name, grad in b[1].items():
        torch.testing.assert_close(a[1][name], grad, rtol=1e-4,
                                   atol=1e-5 + 1e-4 * grad.abs().max().item())


def test_every_causal_lm_type_is_in_the_zoo_or_refused_with_a_reason():
    assert zoo.check_coverage() == []
    assert all(reason.strip() for reason in zoo.UNBUILDABLE.values())
    assert not set(zoo.VARIANTS) & set(zoo.UNBUILDABLE)


def test_the_pairs_run_past_the_windows():
    lengths = [len(p.prompt_ids) + len(c) for p in zoo.PAIRS for c in p.token_lists()[1:]]
    assert min(lengths) > zoo.WINDOW and len(set(lengths)) == len(lengths)
    assert max(t for p in zoo.PAIRS for ids in p.token_lists() for t in ids) < zoo.VOCAB


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_reference_is_deterministic_causal_and_the_same_under_sdpa(name):
    model = zoo.build(name)
    eager = zoo.reference_logps(model)
    assert_same(zoo.reference_logps(zoo.build(name)), eager)
    ids = torch.arange(3, 19)[None]
    with torch.no_grad():
        before = model(input_ids=ids, use_cache=False).logits[0, :-1]
        after = model(input_ids=torch.cat([ids[:, :-1], ids[:, :1]], 1), use_cache=False).logits
    torch.testing.assert_close(after[0, :-1], before, atol=1e-5, rtol=0)  # no look-ahead
    if model._supports_sdpa:
        assert_same(zoo.reference_logps(zoo.build(name, attn_implementation="sdpa")), eager)
