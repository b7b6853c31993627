"""The loss registry: each preference loss is a pure function, registered with what it needs.

A loss takes per-sequence log-probs (already summed, or averaged per token when the loss is
registered ``length_normalized``) and returns a :class:`LossOutput` of per-pair tensors:

    >>> import torch
    >>> spec = get_loss("sigmoid")
    >>> out = spec.fn(torch.tensor([-1.0]), torch.tensor([-2.0]),
    ...               torch.tensor([-1.5]), torch.tensor([-1.5]), LossParams(beta=0.1))
    >>> round(out.losses.item(), 4)   # -log sigmoid(0.1 * ((-1 + 1.5) - (-2 + 1.5)))
    0.6444

Only ``torch`` is imported here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """Per-pair results of a loss.

    losses: (B,) the loss of each pair, differentiable.
    chosen_rewards: (B,) implicit reward of the chosen completion, detached.
    rejected_rewards: (B,) implicit reward of the rejected completion, detached.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters shared by the loss functions (each reads only the ones it uses)."""

    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO / robust / EXO / AOT: assumed label-flip probability
    simpo_gamma: float = 0.5  # SimPO target reward margin (gamma, not gamma/beta)
    nll_weight: float = 1.0  # CPO / ORPO: weight of the chosen NLL term
    discopop_tau: float = 0.05  # DiscoPOP temperature of the log-ratio modulation
    rdpo_alpha: float = 0.01  # R-DPO: length penalty per token of length difference
    kto_desirable_weight: float = 1.0  # KTO lambda_D
    kto_undesirable_weight: float = 1.0  # KTO lambda_U


LossFn = Callable[..., LossOutput]
# (chosen, rejected, ref_chosen, ref_rejected, params) -> (K,) values whose mean is the statistic
StatisticFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what the trainer must supply for it.

    needs_reference: the loss reads reference log-probs (a frozen copy, or the adapter disabled).
    length_normalized: log-probs are averaged over completion tokens instead of summed.
    extra_columns: per-pair dataset columns the loss reads from ``extras``.
    unpaired: rows are (prompt, completion, label); ``chosen`` holds the completion's log-probs,
        ``rejected`` those of a mismatched completion (the KL sample), ``extras["label"]`` 1/0.
    batch_level: the per-pair losses depend on the other pairs of the micro-batch (sorting,
        batch means), so accumulation is not exactly a bigger batch.
    batch_mean: for a loss whose only batch dependence is a mean, ``(extras key, values fn)``:
        the loss reads the mean from ``extras[key]`` when it is there (else takes it over its
        own batch), so the objective can pool it across data-parallel processes and 2
        processes compute what 1 process does.

    The trainer always adds ``extras["chosen_tokens"]`` / ``extras["rejected_tokens"]`` (B,).
    """

    name: str
    fn: LossFn
    needs_reference: bool
    length_normalized: bool = False
    extra_columns: tuple[str, ...] = ()
    paper: str = ""
    formula: str = ""
    aliases: tuple[str, ...] = field(default=())
    unpaired: bool = False
    batch_level: bool = False
    batch_mean: tuple[str, StatisticFn] | None = None


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, needs_reference: bool, length_normalized: bool = False,
                  extra_columns: tuple[str, ...] = (), paper: str = "", formula: str = "",
                  aliases: tuple[str, ...] = (), unpaired: bool = False,
                  batch_level: bool = False,
                  batch_mean: tuple[str, StatisticFn] | None = None) -> Callable[[LossFn], LossFn]:
    """Decorator: add ``fn`` to the registry under ``name`` (and ``aliases``)."""

    def wrap(fn: LossFn) -> LossFn:
        spec = LossSpec(name, fn, needs_reference, length_normalized, extra_columns, paper,
                        formula, aliases, unpaired, batch_level, batch_mean)
        for key in (name, *aliases):
            if key in _REGISTRY:
                raise ValueError(f"loss {key!r} is registered twice")
            _REGISTRY[key] = spec
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    """Look a loss up by name; an unknown name is an error that suggests the nearest ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown loss {name!r}.{hint} Known: {', '.join(sorted(_REGISTRY))}") from None


def available_losses() -> Mapping[str, LossSpec]:
    return dict(_REGISTRY)
