"""The preference objective: one or more registered losses, weighted, with cross-loss modifiers.

Modifiers (each off by default):

- mixing: ``loss=[sigmoid, sft]`` with ``loss_weights=[1.0, 0.2]`` (the RPO recipe);
- f-divergence (Wang et al. 2023, "Beyond Reverse KL"): the log-ratio u = log π - log π_ref is
  replaced by f'(e^u) for ``forward_kl``, ``js`` or ``alpha`` (reverse KL is plain DPO);
- WPO (Zhou et al. 2024): each pair's loss is weighted by the detached, length-normalized
  probability of the pair under the policy (``paper``: Eq. 2, each token's log-prob minus
  log sum_v p(v)^2, as TRL computes it; ``mean``: the plain mean log-prob).

LD-DPO (``ld_alpha``) acts on token log-probs and lives in the policy; TR-DPO (reference
syncing) in the loop's reference service.

    >>> obj = PreferenceObjective.from_names(["sigmoid", "sft"], [1.0, 0.2], LossParams())
    >>> obj.needs_reference, obj.name
    (True, 'sigmoid+sft')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.catalogue import Metric, declare
from ..core.protocols import ObjectiveOutput, Policy
from ..core.types import LossOutput, MetricSums, PairLogps
from ..losses import LossParams, LossSpec, get_loss
from .statistics import StatisticTracker

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
WPO_FORMS = ("off", "paper", "mean")


def f_divergence_logratio(u: torch.Tensor, kind: str, alpha: float = 0.5) -> torch.Tensor:
    """f'(π/π_ref) as a function of the log-ratio u, up to constants that cancel in h.

    reverse KL: u; forward KL: -e^{-u}; JS: u - softplus(u) (= log(2σ(u)) - log 2);
    α-divergence: (1 - e^{-αu})/α. (Wang et al. 2023, Table 1)

    >>> f_divergence_logratio(torch.tensor([0.0]), "forward_kl").item()
    -1.0
    """
    if kind == "reverse_kl":
        return u
    if kind == "forward_kl":
        return -torch.exp(-u)
    if kind == "js":
        return u - F.softplus(u)
    if kind == "alpha":
        return (1 - torch.exp(-alpha * u)) / alpha
    raise ValueError(f"unknown f_divergence {kind!r}; choose from {F_DIVERGENCES}")


@dataclass
class PreferenceObjective:
    specs: list[LossSpec]
    weights: list[float]
    params: LossParams
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5
    wpo: str = "off"
    # Sums a tensor over data-parallel processes (the loop sets it when there are several);
    # the statistics of losses that declare one are then taken over all processes.
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    training: bool = True  # running statistics are updated in training only (``train``)

    def __post_init__(self):
        self.trackers = {s.statistic.key: StatisticTracker(s.statistic)
                         for s in self.specs if s.statistic is not None}

    @classmethod
    def from_names(cls, names: str | list[str], weights: list[float] | None, params: LossParams,
                   **modifiers: Any) -> PreferenceObjective:
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("loss: name at least one loss")
        weights = list(weights) if weights is not None else [1.0] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"loss_weights has {len(weights)} values for {len(names)} losses")
        specs = [get_loss(n) for n in names]
        if len({s.unpaired for s in specs}) > 1:
            raise ValueError("cannot mix paired and unpaired losses: " + ", ".join(names))
        objective = cls(specs, weights, params, **modifiers)
        if objective.f_divergence not in F_DIVERGENCES:
            raise ValueError(
                f"f_divergence={objective.f_divergence!r}: choose from {F_DIVERGENCES}"
            )
        if objective.f_divergence != "reverse_kl" and not all(s.needs_reference for s in specs):
            raise ValueError("f_divergence transforms log-ratios and needs reference-based losses")
        if objective.wpo not in WPO_FORMS:
            raise ValueError(f"wpo={objective.wpo!r}: choose from {WPO_FORMS}")
        return objective

    # --- what the loop reads -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.specs)

    @property
    def needs_reference(self) -> bool:
        return any(s.needs_reference for s in self.specs)

    @property
    def batch_level(self) -> bool:
        return any(s.batch_level for s in self.specs)

    @property
    def pools_batch_stats(self) -> bool:
        """Every batch-level loss here depends on the batch only through pooled statistics."""
        return all(s.statistic is not None and not s.stochastic
                   for s in self.specs if s.batch_level)

    def train(self, mode: bool = True) -> None:
        """Training (statistics updated) or evaluation (statistics read only)."""
        self.training = mode

    def state_dict(self) -> dict[str, Any]:
        """The running statistics, by key (checkpoints save them)."""
        return {key: tracker.state_dict() for key, tracker in self.trackers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.trackers):
            raise ValueError(f"the checkpoint's objective state has {sorted(state)}, this "
                             f"objective tracks {sorted(self.trackers)}")
        for key, tracker in self.trackers.items():
            tracker.load_state_dict(state[key])

    @property
    def unpaired(self) -> bool:
        return self.specs[0].unpaired

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for s in self.specs for c in s.extra_columns))

    def units(self, batch: Any) -> int:
        """Losses are averaged over pairs (or unpaired rows)."""
        return int(batch.example_index.shape[0])

    def __call__(
        self, policy: Policy, batch: Any, ref_logps: torch.Tensor | None
    ) -> ObjectiveOutput:
        """Score the batch's 2B sequences, apply the losses, report reward metrics."""
        if self.wpo == "paper" and not policy.capabilities.token_distribution:
            raise ValueError(
                "wpo=paper needs per-token distributions (a policy that declares "
                "token_distribution); use wpo=mean"
            )
        scores = policy.logps(batch, sampling_norm=self.wpo == "paper")
        out = scores.pairs()
        ref_chosen = ref_rejected = None
        if ref_logps is not None:
            b = out.chosen.shape[0]
            ref_chosen, ref_rejected = ref_logps[:b].float(), ref_logps[b:].float()  # (B,), (B,)
        result = self.losses(out, ref_chosen, ref_rejected, batch.extras)
        metrics = pair_metrics(result, out)
        metrics.merge(scores.token_metrics())
        for tracker in self.trackers.values():  # the running values the losses read
            for name, value in tracker.figures().items():
                metrics.add(name, value)
        return ObjectiveOutput(scores.with_aux(result.losses), metrics)

    # --- the math ------------------------------------------------------------------------------
    def losses(
        self,
        out: PairLogps,
        ref_chosen: torch.Tensor | None,
        ref_rejected: torch.Tensor | None,
        extras: Mapping[str, torch.Tensor],
    ) -> LossOutput:
        """Per-pair losses (B,) summed over the weighted losses; rewards from the first loss."""
        extras = dict(extras)
        extras["chosen_tokens"] = out.chosen_tokens.float()  # (B,)
        extras["rejected_tokens"] = out.rejected_tokens.float()  # (B,)
        total, first = None, None
        for spec, weight in zip(self.specs, self.weights, strict=True):
            args = self._inputs(spec, out, ref_chosen, ref_rejected)
            if spec.statistic is not None:  # over all processes, tracked across steps
                values = spec.statistic.values(*args, self.params)  # (K,)
                extras.update(self.trackers[spec.statistic.key].observe(
                    values, self.training, self.reduce_sum))
            result = spec.fn(*args, self.params, extras)
            total = weight * result.losses if total is None else total + weight * result.losses
            first = first or result
        if self.wpo != "off":
            total = total * self.wpo_weights(out, self.wpo)
        return LossOutput(total, first.chosen_rewards, first.rejected_rewards)

    def _inputs(self, spec: LossSpec, out: PairLogps, ref_chosen, ref_rejected):
        if spec.length_normalized:
            out = out.per_token()
            if ref_chosen is not None:
                ref = PairLogps(
                    ref_chosen, ref_rejected, out.chosen_tokens, out.rejected_tokens
                ).per_token()
                ref_chosen, ref_rejected = ref.chosen, ref.rejected
        chosen, rejected = out.chosen.float(), out.rejected.float()  # (B,)
        if not spec.needs_reference:
            return chosen, rejected, None, None
        if self.f_divergence != "reverse_kl":
            # Hand the loss f'(ratio) as its "log-ratio": chosen' - 0 = f'(u_w).
            zero = torch.zeros_like(chosen)
            chosen = f_divergence_logratio(chosen - ref_chosen, self.f_divergence, self.f_alpha)
            rejected = f_divergence_logratio(
                rejected - ref_rejected, self.f_divergence, self.f_alpha
            )
            return chosen, rejected, zero, zero
        return chosen, rejected, ref_chosen, ref_rejected

    @staticmethod
    def wpo_weights(out: PairLogps, form: str = "paper") -> torch.Tensor:
        """WPO pair weight (Zhou et al. 2024), detached: exp(mean_t a(y_w) + mean_t a(y_l)),
        where a = log π(y_t) - log sum_v π(v)^2 (``paper``, Eq. 2) or log π(y_t) (``mean``).

        >>> out = PairLogps(torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2]),
        ...                 torch.tensor([3]), torch.tensor([-1.0]), torch.tensor([-3.0]))
        >>> round(PreferenceObjective.wpo_weights(out, "mean").item(), 4)   # exp(-1 - 2)
        0.0498
        >>> round(PreferenceObjective.wpo_weights(out, "paper").item(), 4)  # exp(-0.5 - 1)
        0.2231
        """
        mean = out.per_token()
        chosen, rejected = mean.chosen, mean.rejected  # (B,)
        if form == "paper":
            if mean.chosen_norm is None:
                raise ValueError("wpo=paper needs the policy's sampling_norm")
            chosen, rejected = chosen - mean.chosen_norm, rejected - mean.rejected_norm
        return torch.exp(chosen + rejected).detach().float()  # (B,)


declare(
    Metric("rewards/chosen", "implicit reward, chosen", "{:+.4f}"),
    Metric("rewards/rejected", "implicit reward, rejected", "{:+.4f}"),
    Metric("rewards/accuracies", "implicit-reward accuracy", "{:.3f}", "preference accuracy",
           headline=True),
    Metric("rewards/accuracies_strict", "  same, ties counted wrong (TRL's count)", "{:.3f}"),
    Metric("rewards/margins", "implicit-reward margin", "{:+.4f}", "implicit-reward margin",
           headline=True),
    Metric("logps/chosen", "mean log-prob, chosen", "{:.2f}", "log-probs"),
    Metric("logps/rejected", "mean log-prob, rejected", "{:.2f}", "log-probs"),
    Metric("logp_accuracy", "own log-prob ranking accuracy", "{:.3f}", "preference accuracy",
           headline=True),
    Metric("logp_accuracy_per_token", "  same, log-prob per token", "{:.3f}"),
    Metric("rewards/saturated", "pairs whose reward margin saturates the sigmoid", "{:.3f}",
           "implicit-reward margin"),
)
SATURATED = 5.0  # |reward margin| past which -log σ is below 0.007: no gradient left


def ranked(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per pair, 1 when the chosen answer scores higher, 0 when lower, 1/2 on a tie: so that a
    model that cannot tell the answers apart (every margin 0, as a policy equal to its
    reference) scores the no-skill 1/2, not 0 (TRL counts a tie as wrong).

    >>> ranked(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])).tolist()
    [1.0, 0.5, 0.0]
    """
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()  # (B,)


def pair_metrics(result: LossOutput, out: PairLogps) -> MetricSums:
    """Reward and log-prob metrics of a micro-batch of B pairs, as (sum, count); accuracies
    count a tie as half (:func:`ranked`)."""
    m = MetricSums()
    c, r = result.chosen_rewards.float(), result.rejected_rewards.float()  # (B,)
    m.add("rewards/chosen", c)
    m.add("rewards/rejected", r)
    m.add("rewards/accuracies", ranked(c, r))
    m.add("rewards/accuracies_strict", (c > r).float())
    m.add("rewards/margins", c - r)
    m.add("rewards/saturated", ((c - r).abs() > SATURATED).float())
    m.add("logps/chosen", out.chosen.float())
    m.add("logps/rejected", out.rejected.float())
    m.add("logp_accuracy", ranked(out.chosen.float(), out.rejected.float()))
    mean = out.per_token()
    m.add("logp_accuracy_per_token", ranked(mean.chosen.float(), mean.rejected.float()))
    return m
