"""The lm-evaluation-harness bridge on the shipped local tasks: the harness scores exactly our
model (a LoRA adapter merged), the rule-checked task grades answers exactly, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_tiny_llama
from helpers import lora_model

lm_eval_model = pytest.importorskip("lm_eval.api.model")

from dpokit.cli import main  # noqa: E402
from dpokit.eval.harness import local_task_configs, run_harness  # noqa: E402

TASKS = REPO / "data" / "lm_eval_tasks"


def _own_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) as the harness splits it (whole text, context prefix)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    prefix = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logps = model(ids).logits.float().log_softmax(-1)[0, :-1]  # (T-1, V)
    targets = ids[0, 1:]
    return float(logps[prefix - 1:].gather(-1, targets[prefix - 1:, None]).sum())


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    from dpokit.policies.causal_lm.models import load_causal_lm

    model = lora_model(load_causal_lm(str(tiny_model_dir)))
    with torch.no_grad():  # a trained-looking adapter: B != 0 changes the function
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path, model


def test_local_task_files_resolve_their_data_next_to_the_yaml(tmp_path):
    configs = {c["task"]: c for c in local_task_configs([TASKS])}
    assert set(configs) == {"dpokit_sentiment", "dpokit_uppercase"}
    data = configs["dpokit_sentiment"]["dataset_kwargs"]["data_files"]["test"]
    assert Path(data) == (TASKS / "sentiment.jsonl").resolve()
    tagged = tmp_path / "t.yaml"
    tagged.write_text("task: x\nprocess_docs: !function utils.process\n")
    with pytest.raises(ValueError, match=r"t\.yaml: uses a harness YAML tag"):
        local_task_configs([tagged])


def test_harness_scores_exactly_our_adapter(adapter_dir, tokenizer, tiny_model_dir):
    path, peft_model = adapter_dir
    result = run_harness(str(path), task_files=[TASKS / "sentiment.yaml"], limit=3,
                         batch_size=2, log_samples=True)
    samples = result.samples["dpokit_sentiment"]
    assert len(samples) == 3 and 0 <= result.metrics["dpokit_sentiment"]["acc,none"] <= 1
    base = make_tiny_llama(len(tokenizer)).eval()
    peft_model.eval()
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"],
                                                 strict=True):
            ours = _own_loglikelihood(peft_model, tokenizer, context, continuation)
            assert float(resp[0][0]) == pytest.approx(ours, abs=1e-3)
            # and not the base model's: the adapter was applied
            assert abs(_own_loglikelihood(base, tokenizer, context, continuation) - ours) > 1e-3


class _HalfRightLM(lm_eval_model.LM):
    """Answers the uppercase task right for every other request (and once in lower case)."""

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        answers = []
        for i, request in enumerate(requests):
            word = request.args[0].split('"')[1]
            answers.append(f" {word.upper()}.\nmore" if i % 2 == 0 else f" {word}")
        return answers


def test_rule_checked_generation_task_grades_exactly():
    result = run_harness(_HalfRightLM(), task_files=[TASKS / "uppercase.yaml"], limit=8)
    assert result.metrics["dpokit_uppercase"]["exact_match,strict"] == pytest.approx(0.5)


def test_harness_cli(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "h.json"
    assert main(["harness", str(tiny_model_dir), "--task-files", str(TASKS), "--limit", "2",
                 "--batch-size", "2", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert "acc,none" in figures["dpokit_sentiment"]
    assert "exact_match,strict" in figures["dpokit_uppercase"]
    assert "dpokit_sentiment" in capsys.readouterr().out
    assert main(["harness", str(tiny_model_dir)]) == 2  # no tasks: one line
