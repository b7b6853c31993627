"""Trajectory invariants and end-to-end behaviour of the trainer on tiny in-process models."""

import dataclasses
import json

import pytest
import torch
from conftest import held_out_rows, sentiment_rows
from helpers import BF16, crash_after, tiny_trainer

from dpokit.train import NonFiniteError


def _grads_at_first_step(trainer):
    """Run one optimizer step and return the gradients the optimizer saw."""
    seen = {}
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)

    def hook(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                seen[id(p)] = p.grad.detach().clone()

    handle = inner.register_step_pre_hook(hook)
    metrics = trainer._train_step()
    handle.remove()
    names = {id(p): n for n, p in trainer.policy.model.named_parameters()}
    return {names[k]: v for k, v in seen.items()}, metrics


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("lora", [False, True])
def test_accumulation_equals_one_big_batch(tmp_path, tokenizer, lora, precision):
    """8 pairs as 1x8, 2x4 and 8x1 micro-batches give the same gradient and metrics.
    The pairs have different lengths, so a per-micro-batch mean would not match. In fp32 to
    fp32's rounding; in bf16 to BF16 (tests/helpers.py: each micro-batch rounds its own partial
    gradient), of a value or of a gradient's largest element (measured: 6e-3 of it, on the
    AMD EPYC with AVX512-BF16)."""
    results = []
    for batch_size, accum in ((8, 1), (4, 2), (1, 8)):
        trainer = tiny_trainer(tmp_path / f"{batch_size}", tokenizer, lora=lora,
                               batch_size=batch_size, grad_accum_steps=accum, max_steps=1,
                               mixed_precision=precision)
        assert trainer.precision == {"no": "fp32", "bf16": "bf16"}[precision]
        results.append(_grads_at_first_step(trainer))
    (g0, m0), *others = results
    assert g0 and sum(float(v.abs().sum()) for v in g0.values()) > 0  # (LoRA A: 0 at step 1)
    rel = 1e-4 if precision == "no" else BF16
    for grads, metrics in others:
        assert grads.keys() == g0.keys()
        for name in g0:
            atol = 1e-6 if precision == "no" else BF16 * float(g0[name].abs().max())
            torch.testing.assert_close(grads[name], g0[name], atol=atol, rtol=rel)
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert metrics[key] == pytest.approx(m0[key], rel=rel, abs=1e-6), key


@pytest.mark.parametrize("loss,precision", [("sigmoid", "no"), ("bco_pair", "no"),
                                            ("beta_dpo", "no"), ("sigmoid", "bf16"),
                                            ("beta_dpo", "bf16")])
def test_resume_gives_the_same_later_losses(tmp_path, tokenizer, loss, precision):
    """Also for the losses whose statistics run across steps (BCO's δ, β-DPO's M0 and σ,
    saved in objective.pt) and draw random numbers (β-DPO's filter). In bf16 to fp32's
    tolerance: the resumed steps round the same numbers the same way (tests/helpers.py)."""
    common = dict(max_steps=6, batch_size=3, loss=loss, mixed_precision=precision)
    uninterrupted = tiny_trainer(tmp_path / "a", tokenizer, **common)
    assert uninterrupted.precision == {"no": "fp32", "bf16": "bf16"}[precision]
    full = uninterrupted.train()
    crash_after(tiny_trainer(tmp_path / "b", tokenizer, save_every=3, **common), 4)
    assert [p.name for p in (tmp_path / "b/out/checkpoints").iterdir()] == ["step-0000003"]
    saved = torch.load(tmp_path / "b/out/checkpoints/step-0000003/objective.pt")
    assert set(saved) == {"sigmoid": set(), "bco_pair": {"bco_delta"},
                          "beta_dpo": {"beta_dpo_gap"}}[loss]
    resumed = tiny_trainer(tmp_path / "b", tokenizer, resume=True, **common).train()
    assert [m["step"] for m in resumed.history] == [4, 5, 6]
    later = [m["loss"] for m in full.history[3:]]
    assert [m["loss"] for m in resumed.history] == pytest.approx(later, rel=1e-6, abs=1e-7)
    assert later[0] != pytest.approx(full.history[0]["loss"], rel=1e-3)  # the test can fail


@pytest.mark.parametrize("lora", [False, True])
def test_fused_adamw_follows_its_per_tensor_twin(tmp_path, tokenizer, lora):
    """Five steps with torch's fused AdamW (the default) and with the per-tensor loop: the same
    losses and the same weights; the parameters moved, so the comparison can fail."""
    runs = {}
    for fused in (True, False):
        trainer = tiny_trainer(tmp_path / str(fused), tokenizer, lora=lora, max_steps=5,
                               batch_size=3, adamw_fused=fused, learning_rate=1e-3)
        start = {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters()
                 if p.requires_grad}
        history = trainer.train().history
        group = trainer.optimizer.param_groups[0]
        assert group["fused"] is (True if fused else None)
        runs[fused] = ([m["loss"] for m in history],
                       {n: p.detach() for n, p in trainer.policy.model.named_parameters()
                        if p.requires_grad})
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5, abs=1e-6)
    moved = 0.0
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, atol=1e-6, rtol=1e-5)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-4


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=5, save_every=1, batch_size=4)
    spec = trainer.objective.specs[0]

    def poisoned(*args):
        out = spec.fn(*args)
        if trainer.step == 2:  # during step 3
            return out._replace(losses=out.losses * float("nan"))
        return out

    trainer.objective.specs[0] = dataclasses.replace(spec, fn=poisoned)
    with pytest.raises(NonFiniteError, match=r"the loss is nan at step 3.*step-0000002, is intact"):
        trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "out/checkpoints").iterdir())
    assert checkpoints == ["step-0000001", "step-0000002"]
    state = json.loads((tmp_path / "out/checkpoints/step-0000002/state.json").read_text())
    assert state["step"] == 2


def test_nonfinite_gradient_stops(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2)
    param = trainer.policy.trainable_parameters()[0]
    param.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match="gradient norm"):
        trainer.train()


@pytest.mark.parametrize(
    "loss,lora",
    [
        ("sigmoid", False),
        ("sigmoid", True),
        ("ipo", False),
        ("hinge", False),
        ("robust", False),
        ("simpo", False),
    ],
)
def test_end_to_end_held_out_accuracy_rises(tmp_path, tokenizer, loss, lora):
    extra = {"label_smoothing": 0.1} if loss == "robust" else {}
    if loss == "simpo":
        extra = {"beta": 2.0}
    trainer = tiny_trainer(
        tmp_path,
        tokenizer,
        rows=sentiment_rows(2),
        eval_rows=held_out_rows(),
        loss=loss,
        lora=lora,
        learning_rate=3e-3 if lora else 1e-3,
        num_epochs=6,
        batch_size=8,
        **extra,
    )
    before = trainer.evaluate()
    result = trainer.train()
    after = result.eval_history[-1]
    # Held-out reward accuracy: a tie counts half, so a policy equal to its reference (every
    # margin 0) starts at exactly the no-skill 1/2 (SimPO's reward needs no reference)
    if loss == "simpo":
        assert before["eval/rewards/accuracies"] <= 0.6, before
    else:
        assert before["eval/rewards/accuracies"] == 0.5, before
    assert after["eval/rewards/accuracies"] >= 0.9, after
    assert after["eval/rewards/margins"] > before["eval/rewards/margins"]
    history = result.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "grad_norm",
        "learning_rate",
        "tokens_per_s",
        "examples_per_s",
    } <= history[0].keys()
    lines = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(history) + 1 and "eval/logp_accuracy" in lines[-1]


def test_reference_log_probs_are_cached_and_reused(tmp_path, tokenizer):
    cache = str(tmp_path / "refcache")
    calls = []

    def counting(trainer):
        original = trainer.policy.reference_logps
        trainer.policy.reference_logps = lambda b: calls.append(b.num_pairs) or original(b)
        return trainer

    first = counting(
        tiny_trainer(
            tmp_path / "1", tokenizer, max_steps=2, precompute_ref_logps=True, ref_cache_dir=cache
        )
    )
    first.train()
    assert sum(calls) == len(first.source.dataset)  # once per pair, up front; not in training
    assert len(list((tmp_path / "refcache").glob("*.pt"))) == 1
    calls.clear()
    second = counting(
        tiny_trainer(
            tmp_path / "2", tokenizer, max_steps=2, precompute_ref_logps=True, ref_cache_dir=cache
        )
    )
    second.train()
    assert calls == []  # reused from disk
    torch.testing.assert_close(
        second.reference.tables["train"].values, first.reference.tables["train"].values
    )
    # the cached values equal on-the-fly reference log-probs
    batch = first.source.collate([first.source.dataset[i] for i in range(4)])
    on_the_fly = first.policy.reference_logps(batch).pairs()
    torch.testing.assert_close(
        first.reference.tables["train"].values[:4, 0], on_the_fly.chosen, atol=1e-5, rtol=1e-5
    )
    # other data -> another key
    calls.clear()
    third = counting(
        tiny_trainer(
            tmp_path / "3",
            tokenizer,
            rows=sentiment_rows(1),
            max_steps=1,
            precompute_ref_logps=True,
            ref_cache_dir=cache,
        )
    )
    third.train()
    assert sum(calls) == len(third.source.dataset)
    assert len(list((tmp_path / "refcache").glob("*.pt"))) == 2


@pytest.mark.parametrize("lora", [False, True])
def test_final_model_loads_back_with_transformers_or_peft(tmp_path, tokenizer, lora):
    from transformers import AutoModelForCausalLM

    trainer = tiny_trainer(tmp_path, tokenizer, lora=lora, max_steps=2, learning_rate=1e-2)
    trainer.train()
    final = trainer.save_final()
    ids = torch.tensor([[5, 6, 7, 8]])
    trainer.policy.model.eval()
    expected = trainer.policy.model(input_ids=ids).logits
    if lora:
        from conftest import make_tiny_llama
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(make_tiny_llama(len(tokenizer)), final)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(final)
    torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert (final / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, tokenizer, lora):
    from conftest import make_tiny_llama

    grads = []
    for checkpointing in (False, True):
        model = make_tiny_llama(len(tokenizer))
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        trainer = tiny_trainer(
            tmp_path / str(checkpointing),
            tokenizer,
            model=model,
            lora=lora,
            max_steps=1,
            batch_size=8,
        )
        grads.append(_grads_at_first_step(trainer)[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_the_baseline_evaluation_is_a_row_at_step_0_and_a_resume_keeps_it_once(tmp_path,
                                                                              tokenizer):
    """eval_before writes its evaluation to metrics.jsonl at step 0 (what report and doctor
    compare the end with); a resumed run neither repeats nor loses it."""
    import json

    from conftest import held_out_rows
    from helpers import crash_after

    def eval_steps(folder):
        rows = [json.loads(x) for x in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if "eval/loss" in r]

    kw = dict(eval_rows=held_out_rows(), eval_before=True, max_steps=4, eval_every=None)
    full = tiny_trainer(tmp_path / "a", tokenizer, **kw).train()
    assert [e["step"] for e in full.eval_history] == [0, 4]
    assert eval_steps(tmp_path / "a") == [0, 4]
    assert full.eval_history[0]["eval/rewards/margins"] == 0.0  # the policy is its reference
    crash_after(tiny_trainer(tmp_path / "b", tokenizer, save_every=2, **kw), 3)
    assert eval_steps(tmp_path / "b") == [0]
    resumed = tiny_trainer(tmp_path / "b", tokenizer, resume=True, **kw).train()
    assert [e["step"] for e in resumed.eval_history] == [4]
    assert eval_steps(tmp_path / "b") == [0, 4]
