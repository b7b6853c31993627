"""Edges of the segment plan the mutator (tools/mutate.py) found unpinned: the varlen index of
two rows of segments (flash_varlen's inputs, checked here on the CPU), what a layer's call may
ask for, when the plain attention math is needed, and flash-attn's detection."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from dpokit.policies.causal_lm.attention import (
    LayerAttention,
    SegmentPlan,
    UnsupportedAttention,
    flash_attn_available,
    layer_attention,
)


def test_the_varlen_index_of_two_rows():
    """Row 0: a pair (prompt 2, chosen 3, rejected 1) at 0 and an SFT sequence (4 + 2) at 6;
    row 1: a pair (3, 1, 2) at 0. T = 12."""
    plan = SegmentPlan([[(0, 2, 3, 1), (6, 4, 2, 0)], [(0, 3, 1, 2)]], 12)
    index = plan.varlen()
    assert index.first.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert index.cu_first.tolist() == [0, 5, 11, 15] and index.max_first == 6
    assert index.second_q.tolist() == [5, 16, 17]
    assert index.second_k.tolist() == [0, 1, 5, 12, 13, 14, 16, 17]
    assert index.cu_second_q.tolist() == [0, 1, 3] and index.cu_second_k.tolist() == [0, 3, 8]
    assert plan.varlen() is index  # built once


def test_a_layer_may_pass_none_for_anything_but_not_a_value_dpokit_ignores():
    module = torch.nn.Identity()
    assert layer_attention(module, dropout_rate=None, position_ids=torch.zeros(1)) == \
        LayerAttention()
    assert layer_attention(module, is_causal=True) == LayerAttention()
    with pytest.raises(UnsupportedAttention, match="Identity asks attention for dropout_rate"):
        layer_attention(module, dropout_rate=0.1)
    with pytest.raises(UnsupportedAttention, match="is_causal"):
        layer_attention(module, is_causal=False)
    got = layer_attention(module, sliding_window=4, softcap=30)
    assert got == LayerAttention(4, 30.0, None) and got.plain_math


@pytest.mark.parametrize("softcap, sinks, plain", [(None, None, False), (50.0, None, True),
                                                  (None, torch.zeros(2), True),
                                                  (50.0, torch.zeros(2), True)])
def test_the_plain_math_is_for_soft_caps_or_sinks(softcap, sinks, plain):
    assert LayerAttention(None, softcap, sinks).plain_math is plain


def test_flash_attn_is_detected_by_importing_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # an import of it fails
    assert flash_attn_available() is False
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert flash_attn_available() is True
