"""``dpokit eval``: what a saved model or adapter does, against its reference.

On held-out pairs: the DPO loss, accuracy and margin of the implicit reward
β·(log π - log π_ref), and of the model's own log-prob ranking (summed and per token). With
generation on held-out prompts (batched, KV cache, seeded): the mean reward of the model's
samples, the sequence-level KL to the reference estimated from those samples (exactly the
tokens drawn, scored by both models), mean length, distinct-1/2, repetition rate, the share of
degenerate samples, and the win rate against the reference's own samples under a judge
(randomized order, ties, length-controlled).

    >>> report = evaluate(load_policy("outputs/run/final"), pairs=records,   # doctest: +SKIP
    ...                   prompts=prompt_rows, reward=load_reward("vader"))
    >>> print(format_report(report))                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.catalogue import Metric, declare, table
from ..data.builders import DEGENERATE, PromptRow, detect_failures
from ..data.io import Record
from ..data.text import SequenceCollator, TokenizeSettings, build_pairs
from ..data.text.collate import PairCollator
from ..data.text.sft import TokenizedSequence
from ..losses import LossParams
from ..objectives import PreferenceObjective
from ..policies.causal_lm import CausalLMPolicy
from ..policies.causal_lm.samplers import HFSampler, Sampler
from ..policies.causal_lm.sampling import Sample, SamplingSettings
from ..train import sequential_batches
from ..train.metrics import objective_metrics
from .metrics import (
    Estimate,
    Judge,
    distinct_n,
    repetition_rate,
    reward_judge,
    sequence_kl,
    win_rate,
)
from .rewards import Reward
from .tdi import GeometrySettings, StyleProbes, measure_geometry

declare(
    Metric("gen/reward", "mean reward of own samples", "{:+.4f}", "reward of own samples",
           headline=True),
    Metric("gen/kl", "KL(policy || reference), nats/sample", "{:.4f}",
           "KL to the reference (nats per sample)", headline=True),
    Metric("gen/win_rate", "win rate vs reference samples", "{:.3f}", "win rate vs reference",
           headline=True),
    Metric("gen/win_rate_lc", "  length-controlled", "{:.3f}", "win rate vs reference"),
    Metric("gen/ties", "  ties", "{:.3f}"),
    Metric("gen/length_tokens", "mean length, tokens", "{:.1f}", "length of own samples"),
    Metric("gen/distinct_1", "distinct-1", "{:.3f}", "diversity of own samples"),
    Metric("gen/distinct_2", "distinct-2", "{:.3f}", "diversity of own samples"),
    Metric("gen/repetition", "repetition rate (3-grams)", "{:.3f}"),
    Metric("gen/degenerate", "degenerate samples", "{:.3f}"),
)


@dataclass
class EvalReport:
    """Every figure, by name (``eval/...`` keys, as in ``metrics.jsonl``), and a few samples."""

    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def preference_metrics(policy: CausalLMPolicy, records: Sequence[Record], beta: float = 0.1,
                       settings: TokenizeSettings | None = None,
                       batch_size: int = 8) -> dict[str, float]:
    """DPO loss and implicit-reward figures (when the policy has a reference) and the model's
    own log-prob ranking, on held-out pairs."""
    settings = settings or TokenizeSettings(chat_template_for_strings=True)
    pairs = build_pairs(list(records), policy.tokenizer, settings)
    collate = PairCollator(policy.tokenizer.pad_token_id, "padded")
    objective = PreferenceObjective.from_names("sigmoid", None, LossParams(beta=beta))
    has_ref = policy.capabilities.has_reference

    def forward(batch):
        with torch.no_grad():
            ref = policy.reference_logps(batch).logps.float() if has_ref else None
            if ref is None:  # ranking only: a zero reference leaves the log-prob figures
                ref = torch.zeros(batch.num_sequences)
            return objective(policy, batch, ref)

    batches = (collate([pairs[i] for i in indices])
               for indices in sequential_batches(len(pairs), batch_size))
    with policy_eval_mode(policy):
        means = objective_metrics(objective, batches, forward)
    keep = means if has_ref else {k: v for k, v in means.items() if k.startswith(("logp",
                                                                                  "logps"))}
    return {f"eval/{k}": v for k, v in keep.items()}


@contextmanager
def policy_eval_mode(policy: CausalLMPolicy):
    policy.train(False)
    try:
        yield
    finally:
        policy.train(True)


@torch.no_grad()
def sample_logps(policy: CausalLMPolicy, samples: Sequence[Sample],
                 batch_size: int = 16) -> tuple[list[float], list[float]]:
    """Summed log-probs of exactly the drawn tokens, under the policy and its reference."""
    sequences = [TokenizedSequence(i, list(s.prompt_ids), list(s.token_ids))
                 for i, s in enumerate(samples)]
    collate = SequenceCollator(policy.tokenizer.pad_token_id, "padded")
    mine, ref = [], []
    with policy_eval_mode(policy):
        for indices in sequential_batches(len(sequences), batch_size):
            batch = collate([sequences[i] for i in indices])
            mine += policy.logps(batch).logps.float().tolist()  # (S,)
            ref += policy.reference_logps(batch).logps.float().tolist()  # (S,)
    return mine, ref


def generation_metrics(policy: CausalLMPolicy, prompts: Sequence[PromptRow],
                       settings: SamplingSettings, reward: Reward | None = None,
                       judge: Judge | None = None, sampler: Sampler | None = None
                       ) -> EvalReport:
    """Sampled-answer figures on ``prompts`` (see the module docstring); ``sampler``: Hugging
    Face ``generate`` unless given."""
    tok = policy.tokenizer
    texts_in = [p.prompt for p in prompts]
    sampler = sampler or HFSampler()
    groups = sampler(policy.model, tok, texts_in, settings)
    flat = [(p, s) for p, g in zip(prompts, groups, strict=True) for s in g]
    texts = [s.text for _, s in flat]
    report = EvalReport()
    m = report.metrics
    m["eval/gen/length_tokens"] = sum(s.num_tokens for _, s in flat) / len(flat)
    m["eval/gen/distinct_1"] = distinct_n(texts, 1)
    m["eval/gen/distinct_2"] = distinct_n(texts, 2)
    m["eval/gen/repetition"] = repetition_rate(texts)
    m["eval/gen/degenerate"] = sum(bool(detect_failures(s.text, s.finished, DEGENERATE))
                                   for _, s in flat) / len(flat)
    scores = None
    if reward is not None:
        scores = reward([p.prompt for p, _ in flat], texts, [p.reference for p, _ in flat])
        per_prompt = [sum(scores[i:i + settings.num_samples]) / settings.num_samples
                      for i in range(0, len(scores), settings.num_samples)]
        est = Estimate.of(per_prompt)
        m["eval/gen/reward"], m["eval/gen/reward_se"] = est.mean, est.stderr
    if policy.capabilities.has_reference:
        mine, ref = sample_logps(policy, [s for _, s in flat])
        kl = sequence_kl(mine, ref)
        m["eval/gen/kl"], m["eval/gen/kl_se"] = kl.mean, kl.stderr
        judge = judge or (reward_judge(reward) if reward is not None else None)
        if judge is not None:
            with policy.as_reference() as ref_model:
                ref_groups = sampler(ref_model, tok, texts_in, settings)
            baseline = [s.text for g in ref_groups for s in g]
            wr = win_rate(judge, [p.prompt for p, _ in flat], texts, baseline, settings.seed)
            m["eval/gen/win_rate"], m["eval/gen/win_rate_se"] = wr.rate, wr.stderr
            m["eval/gen/win_rate_lc"] = wr.length_controlled
            m["eval/gen/ties"] = wr.ties / len(flat)
    for i, (p, s) in enumerate(flat[::settings.num_samples][:6]):
        report.samples.append({"prompt": p.prompt, "sample": s.text,
                               **({"reward": scores[i * settings.num_samples]}
                                  if scores else {})})
    return report


def geometry_metrics(policy: CausalLMPolicy, probes: StyleProbes,
                     settings: GeometrySettings | None = None) -> dict[str, float]:
    """Style TDI and trajectory TDI of the model (``eval/geometry/``) and, when it has one, of
    its reference (``eval/geometry/reference_``), on the same seeded perturbations."""
    settings = settings or GeometrySettings()
    policy.train(False)
    m = measure_geometry(policy.model, policy.tokenizer, probes, settings).figures(
        "eval/geometry/")
    if policy.capabilities.has_reference:
        with policy.as_reference() as ref_model:
            m.update(measure_geometry(ref_model, policy.tokenizer, probes, settings).figures(
                "eval/geometry/reference_"))
        m["eval/geometry/style_tdi_change"] = (m["eval/geometry/style_tdi"]
                                               / m["eval/geometry/reference_style_tdi"] - 1)
    return m


def evaluate(policy: CausalLMPolicy, pairs: Sequence[Record] | None = None,
             prompts: Sequence[PromptRow] | None = None, reward: Reward | None = None,
             judge: Judge | None = None, settings: SamplingSettings | None = None,
             beta: float = 0.1, tokenize: TokenizeSettings | None = None,
             probes: StyleProbes | None = None, sampler: Sampler | None = None) -> EvalReport:
    """Preference figures on ``pairs``, generation figures on ``prompts``, embedding geometry
    on style ``probes``."""
    report = EvalReport()
    if probes is not None:
        report.metrics.update(geometry_metrics(policy, probes))
    if pairs:
        report.metrics.update(preference_metrics(policy, pairs, beta, tokenize))
    if prompts:
        gen = generation_metrics(policy, prompts, settings or SamplingSettings(), reward, judge,
                                 sampler)
        report.metrics.update(gen.metrics)
        report.samples = gen.samples
    return report


def generation_evaluator(run: Any, online: Any, seed: int, chat: bool) -> Any:
    """What the loop calls at each evaluation when ``run.eval_prompts`` is set: the generation
    figures of :func:`generation_metrics` (sampling as the ``online`` section says, seed
    10,000 + ``seed``, the same at every evaluation; ``chat``: string prompts as a chat turn);
    None when it is not set. ``run`` and ``online``: those config sections."""
    from ..data import load_records
    from ..data.builders import prompt_rows
    from .rewards import load_reward

    o = online
    if not run.eval_prompts:
        return None
    prompts = prompt_rows(load_records(run.eval_prompts))
    reward = load_reward(run.eval_reward or o.reward)
    settings = SamplingSettings(num_samples=run.eval_samples, max_new_tokens=o.max_new_tokens,
                                temperature=o.temperature, top_p=o.top_p,
                                seed=10_000 + seed, batch_size=o.sample_batch_size, chat=chat)

    def evaluate_generation(policy) -> dict[str, Any]:
        report = generation_metrics(policy, prompts, settings, reward)
        return {**report.metrics, "eval/gen/samples": report.samples}

    return evaluate_generation


def format_report(report: EvalReport) -> str:
    """The figures as a table (with ± standard errors where measured)."""
    return table(report.metrics)


__all__ = ["EvalReport", "evaluate", "format_report", "generation_metrics", "geometry_metrics",
           "preference_metrics"]
