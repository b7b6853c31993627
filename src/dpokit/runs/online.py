"""Online and iterative DPO on causal LMs: pairs from the policy's own samples.

- ``online.mode: online`` (Guo et al. 2024): every step samples ``num_samples`` completions
  for ``prompts_per_step`` prompts from the current policy, scores them with the reward, pairs
  them (``pairing``) and trains on those pairs, the reference scored live.
- ``online.mode: iterative`` (the iterative recipes: Xu et al. 2023, "Some things are more
  CRINGE than others"; Yuan et al. 2024; TRL's iterative examples): ``iterations`` rounds of
  sample -> score -> pair -> train, each round's model the next round's reference. Each round
  writes its pairs and a round state under ``output_dir/round-N``; ``resume=true`` continues
  after the last finished round (and inside a round from its checkpoints).

Both report the mean reward of the policy's own samples on ``run.eval_prompts`` (fixed seeds,
so rounds are compared on the same random numbers).

    >>> result = run_iterative(load_config("iterative_reviews"))   # doctest: +SKIP
    >>> [r["eval/sample_reward"] for r in result.rounds]           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config.schema import TrainConfig
from ..data.builders import (
    DEGENERATE,
    PromptRow,
    ScoredSettings,
    detect_failures,
    pair_scored,
    prompt_rows,
    score_samples,
    write_rows,
)
from ..data.io import Record, load_records
from ..data.split import prompt_key
from ..data.text.pairs import build_pairs
from ..eval.metrics import Estimate
from ..eval.rewards import Reward, load_reward
from ..objectives import build_objective
from ..policies.causal_lm.models import load_tokenizer
from ..policies.causal_lm.samplers import Sampler, make_sampler
from ..policies.causal_lm.sampling import SamplingSettings
from ..train import EvalSet, make_trainer
from ..train.folder import OutputDirError
from ..train.online import MadePairs, OnlineSource
from .causal_lm import held_out_pairs, laid_out, policy_for, services
from .common import (
    Examples,
    Run,
    base_model_name,
    check_named_files,
    hardware,
    sources,
    tokenize_settings,
    tokenizer_name,
)
from .layouts import decide_layout, proved


def prompt_pool(path: str, what: str = "prompts") -> list[PromptRow]:
    """Distinct prompts of a file (prompt rows or preference rows), in file order."""
    rows, seen = [], set()
    for row in prompt_rows(load_records(path)):
        key = prompt_key(row.prompt)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if not rows:
        raise ValueError(f"{what} {path}: no prompts")
    return rows


def sampling_settings(cfg: TrainConfig, seed: int) -> SamplingSettings:
    o = cfg.online
    return SamplingSettings(num_samples=o.num_samples, max_new_tokens=o.max_new_tokens,
                            temperature=o.temperature, top_p=o.top_p, seed=seed,
                            batch_size=o.sample_batch_size,
                            chat=cfg.data.chat_template_for_strings)


def run_sampler(cfg: TrainConfig) -> Sampler:
    """The online section's sampler on the run's device (``vllm`` is refused off CUDA)."""
    return make_sampler(cfg.online.sampler, hardware(cfg).device.kind,
                        cfg.online.vllm_gpu_memory)


@dataclass
class RewardEstimate:
    """Mean reward of the policy's own samples, its standard error over prompts, the share of
    samples the failure detectors flag (repetition loops, cut off, empty) and a few samples."""

    mean: float
    stderr: float
    n: int
    failure_rate: float = 0.0
    examples: list[tuple[Any, str]] = field(default_factory=list)


def sample_reward(model, tokenizer, prompts: list[PromptRow], reward: Reward,
                  settings: SamplingSettings, sampler: Sampler) -> RewardEstimate:
    """Mean reward of ``model``'s ``settings.num_samples`` samples per prompt (standard error
    over prompts, whose per-prompt means are independent)."""
    samples = sampler(model, tokenizer, [p.prompt for p in prompts], settings)
    scored = score_samples(prompts, lambda _: samples, reward)
    est = Estimate.of([sum(s for _, s in g.responses) / len(g.responses) for g in scored.groups])
    flat = [s for group in samples for s in group]
    failed = sum(bool(detect_failures(s.text, s.finished, DEGENERATE)) for s in flat)
    examples = [(p.prompt, group[0].text) for p, group in zip(prompts, samples, strict=True)]
    return RewardEstimate(est.mean, est.stderr, est.n, failed / max(len(flat), 1), examples[:4])


def make_pair_maker(cfg: TrainConfig, tokenizer, reward: Reward, sampler: Sampler,
                    extra_columns: tuple[str, ...] = ()
                    ) -> Callable[[Any, list[PromptRow], int], MadePairs]:
    """The text side of online DPO: sample (with the policy's current weights), score, pair,
    tokenize, with the objective's ``extra_columns`` (ODPO's offset, from the two scores)."""
    settings = tokenize_settings(cfg.data, cfg.loss, extra_columns)
    o = cfg.online

    def make(policy, prompts: list[PromptRow], seed: int) -> MadePairs:
        draw = lambda ps: sampler(policy.model, tokenizer, ps,  # noqa: E731
                                  sampling_settings(cfg, seed))
        scored = score_samples(prompts, draw, reward)
        built = pair_scored(scored.groups, ScoredSettings(o.pairing, o.pair_margin, seed))
        metrics = {"online/sample_reward": scored.mean_reward()}
        if built.rows:
            metrics["online/reward_margin"] = sum(
                r["score_chosen"] - r["score_rejected"] for r in built.rows) / len(built.rows)
            records = [Record("online samples", i + 1, r) for i, r in enumerate(built.rows)]
            examples = build_pairs(records, tokenizer, settings, "skip")
            return MadePairs(list(examples.items), metrics)
        return MadePairs([], metrics)

    return make


def _eval_pairs(evaluation, cfg: TrainConfig, collate) -> EvalSet | None:
    if evaluation is None:
        return None
    return EvalSet(evaluation, collate, cfg.run.eval_batch_size, evaluation.fingerprint(),
                   collate.key)


def build_online_run(cfg: TrainConfig, log=print) -> Run:
    """An online DPO run: an :class:`OnlineSource` on the generic loop."""
    check_named_files(cfg)
    torch.manual_seed(cfg.optim.seed)
    objective = build_objective(cfg.loss)
    if objective.unpaired:
        raise ValueError(f"online DPO makes pairs; loss {cfg.loss.name!r} trains on unpaired "
                         f"rows")
    tokenizer = load_tokenizer(tokenizer_name(cfg.model))
    # every file and the reward before the model loads
    pool = prompt_pool(cfg.online.prompts or cfg.data.train_data or "")
    reward = load_reward(cfg.online.reward)
    extra = services(cfg, tokenizer, log)
    decision = decide_layout(cfg.model, cfg.data, base_model_name(cfg.model),
                             hardware(cfg).device.kind)
    held_rows = held_out_pairs(cfg.data, cfg.loss, tokenizer, objective)
    policy = policy_for(cfg, tokenizer, objective.needs_reference)
    decision = proved(decision, policy, held_rows or [], tokenizer.pad_token_id, cfg.data, log)
    cfg, collate = laid_out(cfg, decision, log, tokenizer.pad_token_id)
    held = _eval_pairs(held_rows, cfg, collate)
    sampler = run_sampler(cfg)
    source = OnlineSource(pool, make_pair_maker(cfg, tokenizer, reward, sampler,
                                                  objective.extra_columns), collate,
                          cfg.optim.batch_size, cfg.online.prompts_per_step, cfg.optim.seed)
    log(f"online DPO: {len(pool)} prompts, {cfg.online.num_samples} samples each "
        f"({sampler.name}), reward {cfg.online.reward}")
    trainer = make_trainer(cfg, policy, objective, source, held, log=log,
                           hardware=hardware(cfg), **extra)
    decision.write(cfg.run.output_dir) if trainer.accelerator.is_main_process else None
    return Run(cfg, tokenizer, policy, objective, None, None, trainer)  # type: ignore[arg-type]


@dataclass
class IterativeResult:
    rounds: list[dict[str, Any]] = field(default_factory=list)  # one record per round (0: start)
    final: Path | None = None


ROUND_STATE = "round_state.safetensors"


def run_iterative(cfg: TrainConfig, log=print) -> IterativeResult:
    """Rounds of sample -> score -> pair -> train; round N's model is round N+1's reference."""
    check_named_files(cfg)
    torch.manual_seed(cfg.optim.seed)
    o, out = cfg.online, Path(cfg.run.output_dir)
    history = out / "iterations.jsonl"
    if history.exists() and not (cfg.run.resume or cfg.run.overwrite_output_dir):
        raise OutputDirError(f"{out} holds an iterative run (iterations.jsonl): resume=true "
                             f"continues it, overwrite_output_dir=true replaces it")
    objective = build_objective(cfg.loss)
    if not objective.needs_reference or objective.unpaired:
        raise ValueError(f"iterative DPO needs a paired loss with a reference; "
                         f"{cfg.loss.name!r} is not")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, reference="adapter_copy" if cfg.model.lora else "copy"))
    tokenizer = load_tokenizer(tokenizer_name(cfg.model))
    reward = load_reward(o.reward)  # every file and the reward before the model loads
    pool = prompt_pool(o.prompts or cfg.data.train_data or "")
    held = prompt_pool(cfg.run.eval_prompts, "eval_prompts") if cfg.run.eval_prompts else None
    round_services = services(cfg, tokenizer, log)  # one geometry monitor across rounds
    decision = decide_layout(cfg.model, cfg.data, base_model_name(cfg.model),
                             hardware(cfg).device.kind)
    held_rows = held_out_pairs(cfg.data, cfg.loss, tokenizer, objective)
    policy = policy_for(cfg, tokenizer, True)
    decision = proved(decision, policy, held_rows or [], tokenizer.pad_token_id, cfg.data, log)
    cfg, collate = laid_out(cfg, decision, log, tokenizer.pad_token_id)
    held_pairs = _eval_pairs(held_rows, cfg, collate)
    sampler = run_sampler(cfg)
    eval_settings = sampling_settings(cfg, seed=10_000 + cfg.optim.seed)
    result = IterativeResult()

    def measure(round_no: int, extra: dict[str, Any]) -> None:
        record = {"round": round_no, **extra}
        if held:
            est = sample_reward(policy.model, tokenizer, held, reward, eval_settings, sampler)
            record.update({"eval/sample_reward": est.mean, "eval/sample_reward_se": est.stderr,
                           "eval/sample_failure_rate": est.failure_rate,
                           "eval/examples": est.examples})
            log(f"round {round_no}: mean reward of own samples on {est.n} held-out prompts "
                f"{est.mean:+.4f} ± {est.stderr:.4f}; degenerate samples "
                f"{est.failure_rate:.0%}")
        result.rounds.append(record)
        out.mkdir(parents=True, exist_ok=True)
        with history.open("a") as f:
            f.write(json.dumps(record) + "\n")

    done = 0
    if cfg.run.resume:
        finished = sorted(int(p.parent.name.split("-")[1]) for p in out.glob(f"round-*/"
                                                                             f"{ROUND_STATE}"))
        if finished:
            done = finished[-1]
            policy.load_trainable_state_dict(load_file(out / f"round-{done}" / ROUND_STATE))
            log(f"resume: rounds 1-{done} done; continuing with round {done + 1}")
    elif history.exists():
        history.unlink()  # overwrite_output_dir (checked before any loading)
    if done == 0:
        measure(0, {})
    trainer = None
    for round_no in range(done + 1, o.iterations + 1):
        policy.sync_reference(1.0)  # the reference is the model as this round starts
        round_dir = out / f"round-{round_no}"
        pairs_file = round_dir / "pairs.jsonl"
        if not (cfg.run.resume and pairs_file.exists()):
            draw = lambda ps, r=round_no: sampler(  # noqa: E731
                policy.model, tokenizer, ps, sampling_settings(cfg, cfg.optim.seed * 1000 + r))
            scored = score_samples(pool, draw, reward)
            built = pair_scored(scored.groups, ScoredSettings(o.pairing, o.pair_margin,
                                                              cfg.optim.seed))
            if not built.rows:
                raise RuntimeError(f"round {round_no}: no pairs ({built.report.summary()})")
            round_dir.mkdir(parents=True, exist_ok=True)
            write_rows(built.rows, pairs_file)
            log(f"round {round_no}: {built.report.summary()}; mean reward of the samples "
                f"{scored.mean_reward():+.4f}")
        train = build_pairs(load_records(str(pairs_file)), tokenizer,
                            tokenize_settings(cfg.data, cfg.loss, objective.extra_columns),
                            cfg.data.on_bad_rows)
        # each round's metrics.jsonl opens with its baseline (step 0, eval_before) against the
        # round's own reference, the previous round's model
        round_cfg = dataclasses.replace(cfg, run=dataclasses.replace(
            cfg.run, output_dir=str(round_dir)))
        source = sources(round_cfg.optim, round_cfg.data, round_cfg.run, Examples(train, None),
                         collate).train
        trainer = make_trainer(round_cfg, policy, objective, source, held_pairs, log=log,
                               hardware=hardware(cfg), **round_services)
        trained = trainer.train()
        save_file({k: v.contiguous() for k, v in policy.trainable_state_dict().items()},
                  round_dir / ROUND_STATE)
        measure(round_no, {"pairs": len(train), "steps": trained.step,
                           **(trained.eval_history[-1] if trained.eval_history else {})})
        trainer.close()
    if trainer is not None:
        result.final = trainer.save_final(out / "final")
    return result
