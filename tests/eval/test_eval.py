"""Evaluation figures on cases with known answers, and `dpokit eval` end to end."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from conftest import make_tiny_llama, sentiment_rows, write_jsonl
from helpers import records

from dpokit.cli import main
from dpokit.data.builders import PromptRow
from dpokit.eval.evaluate import evaluate, generation_metrics, sample_logps
from dpokit.eval.metrics import distinct_n, repetition_rate, sequence_kl, win_rate
from dpokit.eval.rewards import load_reward
from dpokit.policies.causal_lm import CausalLMPolicy
from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions


def test_distinct_and_repetition_by_hand():
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert repetition_rate(["x y z x y z", "p q r s"]) == pytest.approx((1 - 3 / 4) / 2)


def test_win_rate_against_itself_is_half_even_for_a_position_biased_judge():
    always_first = lambda prompt, a, b: 1.0  # noqa: E731
    texts = [f"answer {i}" for i in range(4000)]
    wr = win_rate(always_first, ["q"] * 4000, texts, texts, seed=0)
    assert abs(wr.rate - 0.5) < 3 * wr.stderr and wr.ties == 0
    tie = lambda prompt, a, b: 0.5  # noqa: E731
    assert win_rate(tie, ["q"] * 10, texts[:10], texts[:10]).rate == 0.5


def _length_biased_judge(quality: dict[str, float], rng: random.Random):
    def judge(prompt, a, b):
        score = quality[a] - quality[b] + 0.8 * (len(a.split()) - len(b.split()))
        return float(rng.random() < 1 / (1 + pow(2.718281828, -score)))
    return judge


@pytest.mark.parametrize("advantage", [0.0, 1.0])
def test_length_control_removes_a_pure_length_effect(advantage):
    rng = random.Random(0)
    n, prompts, cand, base, quality = 3000, [], [], [], {}
    for i in range(n):
        extra = max(0, round(rng.gauss(4, 2)))  # candidates are longer on average
        short = max(0, round(rng.gauss(1, 2)))
        c, b = f"c{i} " + "w " * extra, f"b{i} " + "w " * short
        quality[c], quality[b] = advantage, 0.0
        prompts.append("q")
        cand.append(c.strip())
        base.append(b.strip())
    quality = {k.strip(): v for k, v in quality.items()}
    wr = win_rate(_length_biased_judge(quality, rng), prompts, cand, base, seed=1)
    if advantage == 0.0:
        assert wr.rate > 0.6  # raw: the longer answer wins
        assert abs(wr.length_controlled - 0.5) < 0.04  # at equal length: no preference
    else:
        assert wr.length_controlled > 0.65  # a real advantage survives the control


def test_sequence_kl_of_a_model_against_itself_is_zero_and_positive_after_a_change(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=3)
    same = CausalLMPolicy(model, tokenizer, reference="external",
                          reference_model=copy.deepcopy(model))
    settings = SamplingSettings(num_samples=4, max_new_tokens=8, seed=0)
    samples = [s for g in sample_completions(model, tokenizer, ["hi", "the capital"], settings)
               for s in g]
    mine, ref = sample_logps(same, samples)
    assert sequence_kl(mine, ref).mean == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    changed = CausalLMPolicy(model, tokenizer, reference="external",
                             reference_model=same.reference_model)
    samples = [s for g in sample_completions(model, tokenizer, ["hi", "the capital"] * 8,
                                             settings) for s in g]
    kl = sequence_kl(*sample_logps(changed, samples))
    assert kl.mean > 3 * kl.stderr > 0


def test_sample_logps_score_exactly_the_drawn_tokens(tokenizer):
    """The KL's log-probs equal a manual forward over prompt + drawn tokens."""
    model = make_tiny_llama(len(tokenizer), seed=4)
    policy = CausalLMPolicy(model, tokenizer, reference="external",
                            reference_model=copy.deepcopy(model))
    sample = sample_completions(model, tokenizer, ["hi"], SamplingSettings(1, 6, seed=2))[0][0]
    ids = torch.tensor([list(sample.prompt_ids) + list(sample.token_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    start = len(sample.prompt_ids) - 1
    manual = logits[start:].gather(-1, targets[start:, None]).sum().item()
    assert sample_logps(policy, [sample])[0][0] == pytest.approx(manual, abs=1e-4)


def test_generation_metrics_against_itself(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=5)
    policy = CausalLMPolicy(model, tokenizer, reference="external",
                            reference_model=copy.deepcopy(model))
    reward = load_reward(lambda p, c: float(len(c)))
    report = generation_metrics(policy, [PromptRow("hi"), PromptRow("the capital")],
                                SamplingSettings(num_samples=3, max_new_tokens=8, seed=1),
                                reward)
    m = report.metrics
    assert m["eval/gen/kl"] == pytest.approx(0.0, abs=1e-5)
    # the same model with the same seeds draws the same answers: every comparison ties
    assert m["eval/gen/ties"] == 1.0 and m["eval/gen/win_rate"] == 0.5
    assert 0 < m["eval/gen/distinct_1"] <= 1 and m["eval/gen/length_tokens"] > 0


def test_preference_figures_and_cli(tmp_path, tiny_model_dir, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "the end"}])
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--pairs",
                 str(pairs), "--prompts", str(prompts), "--reward", "helpers:brevity_reward",
                 "--num-samples", "2", "--max-new-tokens", "6", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["eval/loss"] == pytest.approx(0.693147, abs=1e-4)  # policy == reference
    assert figures["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert figures["eval/gen/kl"] == pytest.approx(0.0, abs=1e-4)
    assert "DPO loss" in capsys.readouterr().out
    assert main(["eval", str(tiny_model_dir)]) == 2  # nothing to evaluate: one line
    assert "nothing to evaluate" in capsys.readouterr().err


def test_preference_figures_without_a_reference_keep_only_the_ranking(tokenizer):
    policy = CausalLMPolicy(make_tiny_llama(len(tokenizer)), tokenizer)
    report = evaluate(policy, pairs=records(sentiment_rows(1)))
    assert set(report.metrics) and all(k.startswith(("eval/logp", "eval/logps"))
                                       for k in report.metrics)


def test_generation_figures_during_training_land_in_metrics_jsonl(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "the end"}])
    out = tmp_path / "run"
    assert main(["train", f"model={tiny_model_dir}", f"train_data={pairs}", "lora=false",
                 f"run.eval_prompts={prompts}", "eval_reward=helpers:brevity_reward",
                 "eval_samples=2", "online.max_new_tokens=6", "max_steps=2", "eval_every=1",
                 "batch_size=4", f"output_dir={out}", "progress_bar=false", "log_with=[]",
                 f"ref_cache_dir={tmp_path / 'cache'}", "learning_rate=1e-2"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/gen/reward" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert evals[0]["eval/gen/kl"] == pytest.approx(0.0, abs=1e-4)  # before training
    assert evals[-1]["eval/gen/kl"] != pytest.approx(0.0, abs=1e-4)  # it moved
    train_rows = [r for r in rows if "loss" in r and "eval/loss" not in r]
    assert all("entropy" in r and "mean_token_accuracy" in r and r["num_tokens"] > 0
               for r in train_rows)
    assert evals[0]["eval/gen/samples"][0]["prompt"] == "hi"

    assert main(["report", str(out)]) == 0  # the run's HTML page
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "eval/gen/kl" in page
    assert "first evaluation (step 0)" in page and "model card" in page
    assert (out / "report_files" / "train_0.png").is_file()


def test_report_compares_runs_side_by_side(tmp_path):
    for name, margin in (("a", 0.5), ("b", 1.5)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/margins": margin * s}
                for s in (1, 2, 3)]
        rows.append({"step": 3, "eval/loss": 0.6, "eval/rewards/accuracies": margin / 2})
        write_jsonl(run / "metrics.jsonl", rows)
    out = tmp_path / "cmp.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "a: first" in page and "b: first" in page and "0.75" in page
    assert main(["report", str(tmp_path)]) == 2  # not a run folder: one line


def test_generation_figures_with_a_frozen_adapter_copy_reference(tiny_model_dir):
    """The SFT -> DPO hand-off's reference (adapter_copy) can be sampled and scored: KL 0 and
    all ties while the trained adapter still equals its frozen copy."""
    from dpokit.config import load_config
    from dpokit.policies.causal_lm.models import load_tokenizer
    from dpokit.runs.causal_lm import policy_for

    cfg = load_config(None, model=str(tiny_model_dir), lora=True, reference="adapter_copy",
                      output_dir="unused")
    policy = policy_for(cfg, load_tokenizer(str(tiny_model_dir)))
    report = generation_metrics(policy, [PromptRow("hi")],
                                SamplingSettings(num_samples=2, max_new_tokens=6, seed=0),
                                load_reward(lambda p, c: float(len(c))))
    assert report.metrics["eval/gen/kl"] == pytest.approx(0.0, abs=1e-5)
    assert report.metrics["eval/gen/ties"] == 1.0


def test_iterative_refuses_to_erase_another_runs_history(tmp_path, tiny_model_dir):
    from dpokit.runs.online import run_iterative
    from dpokit.train.folder import OutputDirError

    out = tmp_path / "out"
    out.mkdir()
    (out / "iterations.jsonl").write_text('{"round": 0}\n')
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    from dpokit.config import load_config

    cfg = load_config(None, model=str(tiny_model_dir), output_dir=str(out),
                      **{"online.mode": "iterative", "online.prompts": str(prompts)})
    with pytest.raises(OutputDirError, match="resume=true continues it"):
        run_iterative(cfg, log=lambda _: None)
    assert (out / "iterations.jsonl").read_text() == '{"round": 0}\n'
