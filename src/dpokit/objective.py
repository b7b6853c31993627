"""The training objective: one or more registered losses, weighted, with cross-loss modifiers.

Modifiers (each off by default):

- mixing: ``loss=[sigmoid, sft]`` with ``loss_weights=[1.0, 0.2]`` (the RPO recipe);
- f-divergence (Wang et al. 2023, "Beyond Reverse KL"): the log-ratio u = log π - log π_ref is
  replaced by f'(e^u) for ``forward_kl``, ``js`` or ``alpha`` (reverse KL is plain DPO);
- WPO (Zhou et al. 2024): each pair's loss is weighted by the detached probability of the pair
  under the policy, exp(mean log π(y_w) + mean log π(y_l));

LD-DPO (``ld_alpha``) acts on token log-probs and lives in the policy; TR-DPO (reference
syncing) in the trainer.

    >>> obj = Objective.from_names(["sigmoid", "sft"], [1.0, 0.2], LossParams())
    >>> obj.needs_reference
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import LossOutput, LossParams, LossSpec, get_loss
from .policy import PairLogps

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


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
class Objective:
    specs: list[LossSpec]
    weights: list[float]
    params: LossParams
    f_divergence: str = "reverse_kl"
    f_alpha: float = 0.5
    wpo: bool = False
    # Sums a tensor over data-parallel processes (the trainer sets it when there are several);
    # batch means of losses that declare ``batch_mean`` are then taken over all processes.
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_names(cls, names: str | list[str], weights: list[float] | None, params: LossParams,
                   **modifiers) -> Objective:
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
            raise ValueError(f"f_divergence={objective.f_divergence!r}: choose from {F_DIVERGENCES}")
        if objective.f_divergence != "reverse_kl" and not all(s.needs_reference for s in specs):
            raise ValueError("f_divergence transforms log-ratios and needs reference-based losses")
        return objective

    @property
    def needs_reference(self) -> bool:
        return any(s.needs_reference for s in self.specs)

    @property
    def unpaired(self) -> bool:
        return self.specs[0].unpaired

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for s in self.specs for c in s.extra_columns))

    def __call__(self, out: PairLogps, ref_chosen: torch.Tensor | None,
                 ref_rejected: torch.Tensor | None, extras: Mapping[str, torch.Tensor]) -> LossOutput:
        """Per-pair losses (B,) summed over the weighted losses; rewards from the first loss."""
        extras = dict(extras)
        extras["chosen_tokens"] = out.chosen_tokens.float()  # (B,)
        extras["rejected_tokens"] = out.rejected_tokens.float()  # (B,)
        total, first = None, None
        for spec, weight in zip(self.specs, self.weights, strict=False):
            args = self._inputs(spec, out, ref_chosen, ref_rejected)
            if spec.batch_mean is not None and self.reduce_sum is not None:
                key, values = spec.batch_mean
                v = values(*args, self.params).detach().double()  # (K,)
                pooled = self.reduce_sum(torch.stack([v.sum(), v.new_tensor(v.numel())]))  # (2,)
                extras[key] = (pooled[0] / pooled[1]).float()  # the mean over all processes
            result = spec.fn(*args, self.params, extras)
            total = weight * result.losses if total is None else total + weight * result.losses
            first = first or result
        if self.wpo:
            total = total * self.wpo_weights(out)
        return LossOutput(total, first.chosen_rewards, first.rejected_rewards)

    def _inputs(self, spec: LossSpec, out: PairLogps, ref_chosen, ref_rejected):
        if spec.length_normalized:
            out = out.per_token()
            if ref_chosen is not None:
                ref = PairLogps(ref_chosen, ref_rejected, out.chosen_tokens,
                                out.rejected_tokens).per_token()
                ref_chosen, ref_rejected = ref.chosen, ref.rejected
        chosen, rejected = out.chosen.float(), out.rejected.float()  # (B,)
        if not spec.needs_reference:
            return chosen, rejected, None, None
        if self.f_divergence != "reverse_kl":
            # Hand the loss f'(ratio) as its "log-ratio": chosen' - 0 = f'(u_w).
            zero = torch.zeros_like(chosen)
            chosen = f_divergence_logratio(chosen - ref_chosen, self.f_divergence, self.f_alpha)
            rejected = f_divergence_logratio(rejected - ref_rejected, self.f_divergence, self.f_alpha)
            return chosen, rejected, zero, zero
        return chosen, rejected, ref_chosen, ref_rejected

    @staticmethod
    def wpo_weights(out: PairLogps) -> torch.Tensor:
        """WPO pair weight (Zhou et al. 2024): exp(mean log π(y_w) + mean log π(y_l)), detached.

        >>> w = Objective.wpo_weights(PairLogps(torch.tensor([-2.0]), torch.tensor([-6.0]),
        ...                                     torch.tensor([2]), torch.tensor([3])))
        >>> round(w.item(), 4)   # exp(-2/2 - 6/3) = exp(-3)
        0.0498
        """
        mean = out.per_token()
        return torch.exp(mean.chosen + mean.rejected).detach().float()  # (B,)
