"""Online and iterative DPO on a tiny model: the loop trains on the policy's own samples, the
reward of those samples rises, resume reproduces the run, and each round's model becomes the
next round's reference."""

from __future__ import annotations

import json

import torch
from conftest import sentiment_rows, write_jsonl
from helpers import TEST_DEFAULTS

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.runs.online import build_online_run, run_iterative

ONLINE = {"online.reward": "helpers:brevity_reward", "online.num_samples": 4,
          "online.max_new_tokens": 12, "online.prompts_per_step": 4, "online.temperature": 1.0,
          "batch_layout": "padded", "lora": False, "learning_rate": 3e-3, "beta": 0.5,
          "batch_size": 4}


def online_config(tmp_path, tiny_model_dir, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", sentiment_rows(1))
    return load_config(None, **{**TEST_DEFAULTS, **ONLINE, "model": str(tiny_model_dir),
                                "online.mode": "online", "online.prompts": str(prompts),
                                "output_dir": str(tmp_path / "out"), "eval_data": None,
                                **extra})


def test_online_dpo_trains_on_own_samples_and_their_reward_rises(tmp_path, tiny_model_dir):
    run = build_online_run(online_config(tmp_path, tiny_model_dir, max_steps=60,
                                         learning_rate=1e-2), log=lambda _: None)
    result = run.trainer.train()
    rewards = [m["online/sample_reward"] for m in result.history]
    assert len(rewards) == 60 and all(m["online/pairs"] >= 1 for m in result.history)
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # measured: -15.1 -> -10.3 characters; a policy that did not learn stays near -15
    assert last > first + 3, (first, last)


def _final_weights(run):
    return {k: v.clone() for k, v in run.policy.trainable_state_dict().items()}


def test_online_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    straight = build_online_run(online_config(tmp_path / "a", tiny_model_dir, max_steps=4),
                                log=lambda _: None)
    straight.trainer.train()
    first = build_online_run(online_config(tmp_path / "b", tiny_model_dir, max_steps=4,
                                           save_every=2), log=lambda _: None)
    first.trainer.total_steps = 2  # stop after the checkpoint at step 2
    first.trainer.train()
    halfway = _final_weights(first)
    resumed = build_online_run(online_config(tmp_path / "b", tiny_model_dir, max_steps=4,
                                             resume=True), log=lambda _: None)
    history = resumed.trainer.train().history
    assert [m["step"] for m in history] == [3, 4]  # it continued, it did not start over
    a, b = _final_weights(straight), _final_weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], halfway[k], atol=1e-6) for k in a)
    assert resumed.trainer.source.pairs_made > 0


def test_iterative_rounds_move_the_reference_and_log_rewards(tmp_path, tiny_model_dir):
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "hi"}, {"prompt": "the end"}])
    cfg = online_config(tmp_path, tiny_model_dir, max_steps=3, lora=True,
                        learning_rate=1e-2, **{"online.mode": "iterative",
                                               "online.iterations": 2,
                                               "run.eval_prompts": str(held)})
    seen = []
    result = run_iterative(cfg, log=seen.append)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    assert all("eval/sample_reward" in r for r in result.rounds)
    out = tmp_path / "out"
    assert (out / "round-1" / "pairs.jsonl").is_file() and (out / "final").is_dir()
    rows = [json.loads(x) for x in (out / "round-1" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all(r["rule"] == "scored:best_worst" and r["score_chosen"] >
                        r["score_rejected"] for r in rows)
    lines = (out / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1, 2]
    # round 2 started by copying round 1's adapter into the frozen reference adapter
    assert any("round 2" in s for s in seen)


def test_adapter_copy_reference_sync_is_a_hard_copy(tiny_model_dir):
    from dpokit.policies.causal_lm.models import load_tokenizer
    from dpokit.runs.causal_lm import policy_for

    cfg = load_config(None, **{**TEST_DEFAULTS, "model": str(tiny_model_dir), "lora": True,
                               "reference": "adapter_copy", "output_dir": "unused"})
    policy = policy_for(cfg, load_tokenizer(str(tiny_model_dir)))
    params = dict(policy.model.named_parameters())
    trained = [n for n in params if ".default." in n and "lora_B" in n]
    with torch.no_grad():
        for n in trained:
            params[n].add_(0.5)
    assert not torch.equal(params[trained[0]], params[trained[0].replace(".default.",
                                                                          ".reference.")])
    before = policy.fingerprint()
    policy.sync_reference(1.0)
    for n in trained:
        assert torch.equal(params[n], params[n.replace(".default.", ".reference.")])
        assert not params[n.replace(".default.", ".reference.")].requires_grad
    assert policy.fingerprint() != before  # the reference cache key follows the reference


def test_iterative_from_the_command_line(tmp_path, tiny_model_dir, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", sentiment_rows(1))
    args = ["train", f"model={tiny_model_dir}", "online.mode=iterative", "online.iterations=1",
            f"online.prompts={prompts}", f"run.eval_prompts={prompts}",
            f"output_dir={tmp_path / 'out'}", "max_steps=2", "progress_bar=false",
            "log_with=[]", f"ref_cache_dir={tmp_path / 'cache'}"]
    args += [f"{k}={v}" for k, v in ONLINE.items()]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "mean reward of own samples on held-out prompts by round:" in out
    assert "done: iterative DPO, 1 round(s)" in out


def test_iterative_resume_continues_after_the_last_finished_round(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    cfg = online_config(tmp_path, tiny_model_dir, max_steps=2, lora=True,
                        **{"online.mode": "iterative", "online.iterations": 1})
    run_iterative(cfg, log=lambda _: None)
    round_one = load_file(tmp_path / "out" / "round-1" / "round_state.safetensors")
    seen: list[str] = []
    more = online_config(tmp_path, tiny_model_dir, max_steps=2, lora=True, resume=True,
                         **{"online.mode": "iterative", "online.iterations": 2})
    result = run_iterative(more, log=seen.append)
    assert any("rounds 1-1 done; continuing with round 2" in s for s in seen)
    assert [r["round"] for r in result.rounds] == [2]  # round 1 was not trained again
    assert (tmp_path / "out" / "round-2" / "pairs.jsonl").is_file()
    after = load_file(tmp_path / "out" / "round-2" / "round_state.safetensors")
    assert set(after) == set(round_one) and any(
        not torch.equal(after[k], round_one[k]) for k in after)
    lines = (tmp_path / "out" / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [0, 1, 2]


def test_online_and_iterative_odpo_build_the_offset_column_the_loss_reads(tmp_path,
                                                                          tiny_model_dir):
    """The online pair maker and the held-out set carry the objective's extra columns (ODPO's
    offset from the two samples' scores); without them odpo_loss has no offset to read."""
    import math

    held = write_jsonl(tmp_path / "held.jsonl", [
        {**r, "score_chosen": 3.0, "score_rejected": 1.0} for r in sentiment_rows(1)[:4]])
    run = build_online_run(online_config(tmp_path / "a", tiny_model_dir, max_steps=2,
                                         loss="odpo", eval_data=str(held)), log=lambda _: None)
    assert run.trainer.eval_set is not None
    result = run.trainer.train()
    assert all(math.isfinite(m["loss"]) for m in result.history)
    assert math.isfinite(result.eval_history[-1]["eval/loss"])
    made = run.trainer.source.make_pairs(run.policy, list(run.trainer.source.prompts[:2]), 0)
    assert made.examples and all(math.isfinite(p.extras["offset"]) for p in made.examples)
    rounds = run_iterative(online_config(tmp_path / "b", tiny_model_dir, max_steps=1,
                                         loss="odpo", **{"online.mode": "iterative",
                                                         "online.iterations": 1}),
                           log=lambda _: None)
    assert len(rounds.rounds) == 2
