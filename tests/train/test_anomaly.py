"""The NaN guard's replay names the first non-finite tensor (a planted module output, a planted
parameter), saves the batch that shows it, and `dpokit doctor`'s check reads the record."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_trainer

from dpokit.train import NonFiniteError
from dpokit.train.health import load_trace, run_checks


def test_a_planted_inf_in_a_module_output_is_named_and_its_batch_saved(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2)
    layer = trainer.policy.model.model.layers[1].mlp
    layer.register_forward_hook(lambda module, inputs, output: output * float("inf"))
    with pytest.raises(NonFiniteError, match=r"first non-finite: the output of module "
                                             r"\S*layers\.1\.mlp;"):
        trainer.train()
    record = json.loads((tmp_path / "out" / "nonfinite.json").read_text())
    assert record["step"] == 1 and record["what"] == "the loss"
    batch = torch.load(tmp_path / "out" / "nonfinite_batch.pt", weights_only=False)
    assert batch.input_ids.shape[0] > 0  # the batch that shows it, to reproduce
    trace, _ = load_trace(tmp_path / "out")
    [finding] = [f for f in run_checks(trace) if f.check == "non_finite"]
    assert "layers.1.mlp" in finding.finding and "nonfinite_batch.pt" in finding.finding


def test_a_planted_inf_parameter_is_named(tmp_path, tokenizer):
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2)
    weight = trainer.policy.model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"the parameter \S*layers\.0\.self_attn\.q_proj"
                                             r"\.weight holds non-finite values"):
        trainer.train()
