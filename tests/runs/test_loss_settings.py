"""Every loss setting traced from the command line's ``key=value`` overrides (parsed by
``dpokit train``'s own loader) through the run builder to the policy, the objective and the
reference service that use it; and every hyper-parameter the loss registry declares changes
what a loss that declares it computes (issue 44: a setting the builder does not pass on, or a
loss that reads a default instead of its setting, fails here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import sentiment_rows, write_jsonl

from dpokit.cli.train import load
from dpokit.config.schema import LossConfig
from dpokit.core import PairLogps
from dpokit.losses import available_losses
from dpokit.losses.registry import _PARAMS
from dpokit.objectives import build_objective
from dpokit.runs import builder_for

PARAMS = sorted(_PARAMS)


def setting_for(name: str) -> float:
    """A value inside the parameter's domain, away from its default."""
    param = _PARAMS[name]
    for value in (param.default * 0.5 + 0.0123, param.default + 0.37, 0.37, 0.6, 3.0):
        if value != param.default and param.check(value) is None:
            return round(value, 6)
    raise AssertionError(name)


def overrides(tmp_path, model_dir, *extra: str) -> list[str]:
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    return [f"model.name={model_dir}", f"train_data={data}", f"output_dir={tmp_path / 'out'}",
            "max_steps=1", "batch_size=2", "log_with=[]", "progress_bar=false",
            "max_length=64", "max_prompt_length=32", "mixed_precision=no", "lora=false",
            *extra]


@pytest.fixture(scope="module")
def every_param_run(tmp_path_factory, tiny_model_dir):
    """One run built from ``key=value`` strings setting every declared loss parameter (and the
    fixed settings) away from its default."""
    tmp = tmp_path_factory.mktemp("settings")
    args = overrides(tmp, tiny_model_dir, "loss=[sigmoid,hinge]", "loss_weights=[1.0,0.25]",
                     "f_divergence=alpha", "f_alpha=0.3", "wpo=mean",
                     "sampo=true", "seed=7", "ref_sync=true", "ref_sync_every=3",
                     "ref_sync_alpha=0.4", "precompute_ref_logps=false",
                     *(f"{name}={setting_for(name)}" for name in PARAMS))
    cfg = load(None, args)
    return builder_for(cfg, "train")(cfg, log=lambda _: None)


@pytest.mark.parametrize("name", PARAMS)
def test_every_registered_loss_parameter_reaches_the_objective(every_param_run, name):
    run = every_param_run
    assert getattr(run.cfg.loss, name) == setting_for(name)
    assert run.trainer.objective is run.objective
    assert getattr(run.objective.params, name) == pytest.approx(setting_for(name), rel=0,
                                                                abs=0)


def test_the_fixed_loss_settings_reach_the_policy_objective_and_reference(every_param_run):
    run = every_param_run
    objective = run.objective
    assert objective.name == "sigmoid+hinge" and list(objective.weights) == [1.0, 0.25]
    assert (objective.f_divergence, objective.f_alpha, objective.wpo) == (
        "alpha", 0.3, "mean")
    assert run.policy.sampo_seed == 7 and run.policy.ld_alpha is None  # SamPO's seed: optim's
    reference = run.trainer.reference
    assert reference.settings.ref_sync and reference.settings.ref_sync_every == 3
    assert reference.settings.ref_sync_alpha == 0.4 and reference.precompute is False


def _inputs(spec, n: int = 6):
    """Log-probs below 0 (per-token averages too: ORPO's odds need p < 1), answers of unequal
    lengths (R-DPO), each extra column the loss reads (GW-DPO's levels: obeyed above the
    overridden, within the fewest levels tried)."""
    torch.manual_seed(0)
    chosen, rejected, ref_c, ref_r = (-torch.rand(n, dtype=torch.float32) * 3 - 0.1
                                      for _ in range(4))
    out = PairLogps(chosen, rejected, torch.randint(2, 9, (n,)), torch.randint(2, 9, (n,)))
    extras = {column: torch.rand(n) + 0.5 for column in spec.extra_columns}
    if spec.unpaired:
        extras["label"] = torch.tensor([1.0, 0.0] * (n // 2))
    if "level_obeyed" in extras:
        extras["level_obeyed"] = torch.zeros(n)
        extras["level_overridden"] = torch.ones(n)
    return out, ref_c, ref_r, extras


# declared on the loss (every loss has beta; GW-DPO's pair shares its parameters) but not read
# by its formula, each for a reason: SFT is the NLL alone, SimPER has no hyper-parameter,
# gw_linear's weight has no privilege term; ODPO's alpha scales the offset built from scores,
# in the data (test_odpo_alpha_reaches_the_offsets_the_data_builds), not in the loss
UNREAD = {("beta", "sft"), ("beta", "simper"), ("gw_eta", "gw_linear"), ("odpo_alpha", "odpo")}


USERS = [(name, loss) for name in PARAMS for loss, spec in sorted(available_losses().items())
         if loss == spec.name and any(p.name == name for p in spec.params)
         and (name, loss) not in UNREAD]


def test_every_declared_parameter_has_a_loss_that_reads_it():
    assert {name for name, _ in USERS} == set(PARAMS) - {"odpo_alpha"}
    assert all((name, loss) in {(n, s.name) for s in available_losses().values()
                                for n in (p.name for p in s.params)} for name, loss in UNREAD)


@pytest.mark.parametrize("name, loss", USERS, ids=[f"{n}-{loss}" for n, loss in USERS])
def test_each_declared_parameter_changes_what_its_loss_computes(name, loss):
    """The loss section with the parameter at its default, then at another value: a loss that
    declares it computes something else (it reads its setting, not a constant)."""
    spec = available_losses()[loss]
    section = dataclasses.replace(LossConfig(), name=loss)
    if spec.stochastic:  # β-DPO's filter: keep every pair, so only the setting differs
        section = dataclasses.replace(section, beta_dpo_rho=0.0)
    default = build_objective(section)
    changed = build_objective(dataclasses.replace(section, **{name: setting_for(name)}))
    if name == "beta_dpo_rho":
        changed = build_objective(dataclasses.replace(section, beta_dpo_rho=0.5))
    args = _inputs(spec)
    torch.manual_seed(1)
    a = default.losses(*args).losses
    torch.manual_seed(1)
    b = changed.losses(*args).losses
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.allclose(a, b, rtol=1e-6, atol=1e-7), (name, loss)


def test_odpo_alpha_reaches_the_offsets_the_data_builds(tmp_path, tiny_model_dir):
    """ODPO's offset from a pair's scores: odpo_alpha * log(1 + score_chosen - score_rejected),
    built from the run's loss section (the loss reads the offset column); LD-DPO's alpha
    reaches the policy, and with SamPO off the policy has no SamPO seed."""
    import math

    rows = [dict(r, score_chosen=7.0, score_rejected=4.0) for r in sentiment_rows(1)]
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    args = overrides(tmp_path, tiny_model_dir, "loss=odpo", "odpo_alpha=2.5",
                    "ld_alpha=0.35", "seed=11")
    args = [a for a in args if not a.startswith("train_data=")] + [f"train_data={data}"]
    cfg = load(None, args)
    run = builder_for(cfg, "train")(cfg, log=lambda _: None)
    offsets = [pair.extras["offset"] for pair in run.train_data]
    assert offsets and offsets == pytest.approx([2.5 * math.log(1 + 3.0)] * len(offsets))
    assert run.policy.ld_alpha == 0.35 and run.policy.sampo_seed is None
    assert run.trainer.reference.precompute is True  # the default, for a reference loss
