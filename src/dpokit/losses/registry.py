"""The loss registry: each preference loss is a pure function, registered with what it needs
and the hyper-parameters it reads, each declared once (:class:`LossParam`).

A loss takes per-sequence log-probs (already summed, or averaged per token when the loss is
registered ``length_normalized``) and returns a :class:`LossOutput` of per-pair tensors:

    >>> import torch
    >>> spec = get_loss("sigmoid")
    >>> out = spec.fn(torch.tensor([-1.0]), torch.tensor([-2.0]),
    ...               torch.tensor([-1.5]), torch.tensor([-1.5]), LossParams(beta=0.1))
    >>> round(out.losses.item(), 4)   # -log sigmoid(0.1 * ((-1 + 1.5) - (-2 + 1.5)))
    0.6444

The config's ``loss`` section, ``dpokit losses`` and the README's table all read these
declarations. Only ``torch`` is imported here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.types import POSITIVE, Domain, LossOutput


@dataclass(frozen=True)
class LossParam:
    """A loss hyper-parameter: its name (a field of the config's ``loss`` section), default,
    one-line meaning and domain.

    >>> LossParam("beta", 0.1, "temperature", POSITIVE).check(-1.0)
    'beta must be > 0, got -1.0'
    """

    name: str
    default: float
    help: str
    domain: Domain = Domain()

    def check(self, value: float) -> str | None:
        """An error message when ``value`` is outside the domain, else None."""
        return self.domain.check(self.name, value)


_PARAMS: dict[str, LossParam] = {}


def declare_param(param: LossParam) -> LossParam:
    """Declare a hyper-parameter once; losses list it in ``register_loss(params=...)``."""
    if param.name in _PARAMS and _PARAMS[param.name] != param:
        raise ValueError(f"loss parameter {param.name!r} is declared twice, differently")
    _PARAMS[param.name] = param
    return param


BETA = declare_param(LossParam(
    "beta", 0.1, "strength of the implicit KL penalty (ORPO's λ, SimPO's β)", POSITIVE))


class LossParams:
    """The values of the declared loss hyper-parameters; unset ones take their defaults.

    >>> LossParams(beta=0.5).beta, LossParams().beta
    (0.5, 0.1)
    """

    def __init__(self, **values: float):
        unknown = sorted(set(values) - set(_PARAMS))
        if unknown:
            raise TypeError(f"unknown loss parameter(s) {unknown}; declared: {sorted(_PARAMS)}")
        self._values = dict(values)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        if name in _PARAMS:
            return _PARAMS[name].default
        raise AttributeError(f"no loss parameter {name!r}")

    def __repr__(self) -> str:
        return f"LossParams({', '.join(f'{k}={v!r}' for k, v in sorted(self._values.items()))})"


LossFn = Callable[..., LossOutput]
# (chosen, rejected, ref_chosen, ref_rejected, params) -> (K,) values whose mean is the statistic
StatisticFn = Callable[..., torch.Tensor]
TRACKS = ("batch", "running", "ema")


@dataclass(frozen=True)
class Statistic:
    """A scalar a batch-level loss reads from ``extras[key]``, computed by the objective from
    ``values(chosen, rejected, ref_chosen, ref_rejected, params)`` (K,) of every process (so a
    data-parallel split computes what one process does), detached.

    track: ``batch``: this micro-batch's mean (KTO's z0). ``running``: the mean of every value
        seen in training, this micro-batch's included (BCO's δ, TRL's ``RunningMoments``).
        ``ema``: moving averages, ``m <- gamma·m + (1-gamma)·batch``, of the batch's mean and
        standard deviation (in ``extras[key + "_std"]``), starting at 0 and updated before use
        (β-DPO's M0 and σ). Evaluation reads a running or moving value without updating it.

    >>> Statistic("bco_delta", lambda *a: None, "running").track
    'running'
    """

    key: str
    values: StatisticFn
    track: str = "batch"
    gamma: float = 0.9

    def __post_init__(self):
        if self.track not in TRACKS:
            raise ValueError(f"statistic {self.key!r}: track {self.track!r} not in {TRACKS}")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what the trainer must supply for it.

    needs_reference: the loss reads reference log-probs (a frozen copy, or the adapter disabled).
    length_normalized: log-probs are averaged over completion tokens instead of summed.
    extra_columns: per-pair dataset columns the loss reads from ``extras``.
    params: the hyper-parameters it reads (``beta`` is always one).
    unpaired: rows are (prompt, completion, label); ``chosen`` holds the completion's log-probs,
        ``rejected`` those of a mismatched completion (the KL sample), ``extras["label"]`` 1/0.
    batch_level: the per-pair losses depend on the other pairs of the micro-batch (sorting,
        batch means), so accumulation is not exactly a bigger batch (the loop warns).
    statistic: for a loss whose batch dependence is a scalar statistic (:class:`Statistic`),
        which the objective computes over all processes (and tracks across steps) and hands
        to the loss in ``extras``; without the objective, the loss takes it over its own batch.
    stochastic: the loss draws random numbers (β-DPO's filter), so no split of the data
        reproduces another exactly.

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
    statistic: Statistic | None = None
    stochastic: bool = False
    params: tuple[LossParam, ...] = (BETA,)


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, needs_reference: bool, length_normalized: bool = False,
                  extra_columns: tuple[str, ...] = (), paper: str = "", formula: str = "",
                  aliases: tuple[str, ...] = (), unpaired: bool = False,
                  batch_level: bool = False, statistic: Statistic | None = None,
                  stochastic: bool = False,
                  params: tuple[LossParam, ...] = ()) -> Callable[[LossFn], LossFn]:
    """Decorator: add ``fn`` to the registry under ``name`` (and ``aliases``); ``params`` are
    the declared hyper-parameters it reads besides ``beta``."""

    def wrap(fn: LossFn) -> LossFn:
        for p in params:
            declare_param(p)
        spec = LossSpec(name, fn, needs_reference, length_normalized, extra_columns, paper,
                        formula, aliases, unpaired, batch_level, statistic, stochastic,
                        (BETA, *params))
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
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown loss {name!r}.{hint} Known: {known}") from None


def available_losses() -> Mapping[str, LossSpec]:
    return dict(_REGISTRY)


def declared_params() -> Mapping[str, LossParam]:
    """Every declared hyper-parameter by name (the config's loss section is built from it)."""
    return dict(_PARAMS)


def loss_needs(spec: LossSpec) -> str:
    """What a registered loss needs, in words (the CLI and the README's table use the same).

    >>> loss_needs(get_loss("simpo"))
    'no reference, length-normalized'
    """
    needs = ["reference" if spec.needs_reference else "no reference"]
    if spec.length_normalized:
        needs.append("length-normalized")
    if spec.unpaired:
        needs.append("unpaired rows (prompt, completion, label)")
    needs += [f"column `{c}`" for c in spec.extra_columns]
    return ", ".join(needs)


def param_values(values: Mapping[str, Any]) -> LossParams:
    """LossParams from a mapping holding (at least) every declared parameter name."""
    return LossParams(**{name: float(values[name]) for name in _PARAMS if name in values})
