"""The layout rules by family, refusals by name, the proof of a layout on the model as loaded,
and the mixture-of-experts routers' auxiliary loss. Exactness of every family in every layout
against its own eager forward is ``test_zoo.py``'s. Tolerance: fp32, 1e-5 unless stated."""

import pytest
import torch
from conftest import make_tiny_llama, sentiment_rows, write_jsonl
from transformers import AutoConfig, AutoModelForCausalLM

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.data.text import TokenizedPair, collate_pairs, collate_sequences
from dpokit.data.text.sft import TokenizedSequence
from dpokit.policies.causal_lm import CausalLMPolicy, kernels
from dpokit.policies.causal_lm.attention import SegmentPlan, UnsupportedAttention
from dpokit.policies.causal_lm.families import (
    LayoutRefused,
    check_consumed,
    choose_layout,
    layout_support,
)
from dpokit.policies.causal_lm.proof import prove_layout
from dpokit.policies.causal_lm.router import load_balancing_loss
from dpokit.runs.layouts import LayoutDecision, decide_layout, proved

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
LONG = [TokenizedPair(0, list(range(3, 10)), list(range(20, 29)), [40, 41, 42, 43, 44, 45]),
        TokenizedPair(1, [5, 6], [7, 8, 9, 10, 11, 12, 13], [50, 51, 52, 53, 54, 55, 56])]


def tiny(model_type: str, attn: str = "sdpa", **options):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**BASE, **options})
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def test_auto_takes_the_fastest_exact_layout_and_an_explicit_one_is_refused_by_name():
    llama = make_tiny_llama(64)
    assert choose_layout("auto", layout_support(llama)) == "prefix_shared"
    assert choose_layout("auto", layout_support(llama), pairs=False) == "packed"
    mamba = tiny("mamba", attn="eager", state_size=4)
    support = layout_support(mamba)
    assert support["padded"] is None and "carry state across tokens" in support["packed"]
    assert choose_layout("auto", support) == "padded"
    with pytest.raises(LayoutRefused, match="batch_layout=packed cannot be exact for mamba: "):
        choose_layout("packed", support, name="mamba")
    sinks = tiny("gpt_oss", attn="eager", head_dim=8, num_local_experts=4,
                 num_experts_per_tok=2, sliding_window=4)
    assert layout_support(sinks, "sdpa_segments")["prefix_shared"] is None  # sinks computed
    assert "no attention-sink term" in layout_support(sinks, "flash_varlen")["prefix_shared"]


@pytest.mark.parametrize("model_type,options,match", [
    ("mamba", {"state_size": 4}, "carry state across tokens"),
    ("bloom", {"n_head": 4, "n_layer": 2}, "outside transformers' attention interface"),
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, "outside transformers'"),
])
def test_the_policy_refuses_a_layout_its_family_cannot_compute(model_type, options, match):
    """Before the model runs: a batch in a layout the family cannot take exactly is an error
    naming the family and the cause; padded scores as the model does."""
    model = tiny(model_type, attn="eager", **options)
    policy = CausalLMPolicy(model)
    with pytest.raises(LayoutRefused, match=f"cannot be exact for {model_type}: .*{match}"):
        policy.logps(collate_pairs(LONG, 0, "prefix_shared"))
    with torch.no_grad():
        padded = policy.logps(collate_pairs(LONG, 0, "padded")).logps
        own = model(input_ids=torch.tensor([LONG[0].prompt_ids + LONG[0].chosen_ids])).logits
    first = torch.log_softmax(own[0], -1)[torch.arange(6, 15), torch.tensor(LONG[0].chosen_ids)]
    torch.testing.assert_close(padded[0], first.sum(), atol=1e-5, rtol=0)


def test_an_attention_keyword_no_backend_implements_is_refused_by_name():
    q = k = v = torch.zeros(1, 2, 3, 4)
    plan = SegmentPlan([[(0, 1, 2, 0)]], 3, "mask")
    module = torch.nn.Module()
    with pytest.raises(UnsupportedAttention, match="asks attention for alibi_bias"):
        kernels.segment_attention(module, q, k, v, None, dpokit_plan=plan, alibi_bias=1.0)
    out, _ = kernels.segment_attention(module, q, k, v, None, dpokit_plan=plan, is_causal=True,
                                       position_ids=None)
    assert out.shape == (1, 3, 2, 4) and plan.calls == 1


def test_a_plan_that_some_layers_never_used_is_an_error_naming_the_family():
    """What a family that calls attention without **kwargs would leave (falcon, stablelm)."""
    model = tiny("mistral", sliding_window=4)
    plan = SegmentPlan([[(0, 2, 2, 0)]], 4)
    plan.calls, plan.windows = 2, [4, None]
    with pytest.raises(LayoutRefused, match=r"mistral: 2 of its 2 attention layers used the "
                                            r"segment plan \(1 of 2 sliding-window"):
        check_consumed(model, plan)
    plan.windows = [4, 4]
    check_consumed(model, plan)


def test_the_proof_finds_a_backend_that_drops_the_window_and_auto_falls_back(monkeypatch):
    """A sliding-window model whose prefix-shared rows ignore the window (as before this
    check): the proof measures the gap on the run's own rows; auto falls back to packed (here
    also wrong) then padded; an explicit layout stops with the figure."""
    model = tiny("mistral", sliding_window=4)
    policy = CausalLMPolicy(model, attention_impl="sdpa_segments")
    assert prove_layout(policy, LONG, "prefix_shared", 0).error < 1e-5
    real = kernels.BACKENDS["sdpa_segments"]
    monkeypatch.setitem(kernels.BACKENDS, "sdpa_segments", lambda plan, q, k, v, d, s, layer:
                        real(plan, q, k, v, d, s, kernels.LayerAttention()))
    wrong = prove_layout(policy, LONG, "prefix_shared", 0)
    assert not wrong.exact and wrong.error > 1e-3
    data = load_config(None).data
    decision = proved(LayoutDecision("auto", "prefix_shared", "mistral", "exact"), policy,
                      LONG, 0, data, log=lambda _: None)
    assert decision.layout == "padded" and [p.layout for p in decision.proofs] == [
        "prefix_shared", "packed", "padded"]
    with pytest.raises(LayoutRefused, match="batch_layout=packed is not exact for mistral on "
                                            "this run's rows: packed proved on 4 sequences"):
        proved(LayoutDecision("packed", "packed", "mistral", "exact"), policy, LONG, 0, data)


def test_the_layout_is_decided_before_any_weight_loads(tmp_path, tokenizer, monkeypatch,
                                                       capsys):
    """dpokit train with an explicit layout a family cannot take: one line naming it, exit 2,
    and the weights never read (loading them raises here)."""
    from dpokit.runs import causal_lm

    folder = tmp_path / "mamba"
    tiny("mamba", attn="eager", state_size=4, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setattr(causal_lm, "load_causal_lm", lambda *a, **k: pytest.fail("loaded"))
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(2))
    capsys.readouterr()
    common = ["train", f"model={folder}", f"train_data={data}", "lora=false", "max_steps=1",
              f"output_dir={tmp_path / 'out'}", "progress_bar=false", "log_with=[]",
              "mixed_precision=no"]
    assert main([*common, "batch_layout=packed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_layout=packed cannot be exact for mamba" in err[0], err
    decision = decide_layout(load_config(None).model, load_config(None, batch_layout="auto").data,
                             str(folder), "cpu")
    assert decision.layout == "padded" and "carry state across tokens" in decision.reason


def moe(coef=0.1):
    return tiny("mixtral", num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=coef)


def test_the_router_loss_is_the_familys_own_in_every_layout_and_only_in_training():
    model = moe()
    ids = list(range(3, 15))
    own = model(input_ids=torch.tensor([ids]), output_router_logits=True).aux_loss  # HF's
    seq = TokenizedSequence(0, ids[:4], ids[4:])
    for layout in ("padded", "packed"):
        aux = CausalLMPolicy(model).logps(collate_sequences([seq], 0, layout)).aux_loss
        torch.testing.assert_close(aux, 0.1 * own, atol=1e-6, rtol=0)
    padded_two = collate_sequences([seq, TokenizedSequence(1, [5], [6, 7])], 0, "padded")
    packed_two = collate_sequences([seq, TokenizedSequence(1, [5], [6, 7])], 0, "packed")
    policy = CausalLMPolicy(model)  # padding counts in neither layout: the same figure
    torch.testing.assert_close(policy.logps(padded_two).aux_loss,
                               policy.logps(packed_two).aux_loss, atol=1e-6, rtol=0)
    with torch.no_grad():  # the reference pass and evaluation compute none
        assert CausalLMPolicy(model).logps(collate_sequences([seq], 0, "packed")).aux_loss is None
    assert CausalLMPolicy(moe(0.0)).logps(collate_sequences([seq], 0, "padded")).aux_loss is None
    off = CausalLMPolicy(model, router_aux_coef=0.0)
    assert off.logps(collate_sequences([seq], 0, "padded")).aux_loss is None


def test_the_router_loss_reaches_the_training_loss_and_its_gradient():
    from dpokit.objectives import SFTObjective

    model = moe()
    batch = collate_sequences([TokenizedSequence(0, [3, 4], [5, 6, 7])], 0, "packed")
    with_aux = SFTObjective()(CausalLMPolicy(model), batch, None)
    without = SFTObjective()(CausalLMPolicy(model, router_aux_coef=0.0), batch, None)
    aux = with_aux.metrics.means()["router_aux"]
    assert aux > 0
    torch.testing.assert_close(with_aux.losses, without.losses + 3 * aux, atol=1e-5, rtol=0)
    with_aux.losses.sum().backward()
    gate = next(p for n, p in model.named_parameters() if "gate" in n and "weight" in n)
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_the_balance_loss_by_hand():
    """Switch Transformer Eq. 4: N · Σ f_i P_i; two experts, top-1, one layer. Tokens 0, 1 go
    to expert 0 with p = (0.73, 0.27), token 2 to expert 1 with p = (0.27, 0.73); token 3 is
    padding: f = (2/3, 1/3), P = (0.577, 0.423)."""
    logits = (torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 0.0]]),)
    real = torch.tensor([True, True, True, False])
    p = torch.sigmoid(torch.tensor(1.0)).item()
    f, big_p = (2 / 3, 1 / 3), ((2 * p + (1 - p)) / 3, (2 * (1 - p) + p) / 3)
    expected = 2 * (f[0] * big_p[0] + f[1] * big_p[1])
    assert load_balancing_loss(logits, 2, 1, real).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("model_type,options", [
    ("gemma2", {"sliding_window": 4, "attn_logit_softcapping": 2.0, "head_dim": 8}),
    ("mistral", {"sliding_window": 4}),
])
def test_flex_computes_windows_and_soft_caps_as_the_mask(model_type, options):
    """FlexAttention's mask_mod (the window by sequence position) and score_mod (the soft-cap),
    forward only (no FlexAttention backward on the CPU), against the dense mask."""
    model = tiny(model_type, attn="eager", **options)
    batch = collate_pairs(LONG, 0, "prefix_shared")
    with torch.no_grad():
        mask = CausalLMPolicy(model, attention_impl="mask").logps(batch).logps
        flex = CausalLMPolicy(model, attention_impl="flex").logps(batch).logps
        padded = CausalLMPolicy(model).logps(collate_pairs(LONG, 0, "padded")).logps
    torch.testing.assert_close(flex, mask, atol=1e-4, rtol=0)
    torch.testing.assert_close(mask, padded, atol=1e-4, rtol=0)
