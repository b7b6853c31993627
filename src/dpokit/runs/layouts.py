"""The batch layout a text run uses: chosen from the model's family before any weight is
loaded (``batch_layout: auto`` takes the fastest exact one; an explicit one that cannot be exact
is refused, one line, exit 2), then proved on the run's own rows with the model as loaded
(``data.prove_layout``): a gap beyond the precision's tolerance stops the run, or under
``auto`` falls back to the next layout. The decision is the run's first line and
``layout.json`` in the run folder.

    >>> LayoutDecision("auto", "prefix_shared", "llama", "exact for llama").line()
    'layout: prefix_shared (auto: exact for llama)'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config.schema import DataConfig, ModelConfig
from ..policies.causal_lm.attention import resolve_impl
from ..policies.causal_lm.families import LayoutRefused, choose_layout, family, layout_support
from ..policies.causal_lm.models import meta_causal_lm
from ..policies.causal_lm.proof import LayoutProof, proof_rows, prove_layout

FALLBACK = {"prefix_shared": "packed", "packed": "padded"}


@dataclass(frozen=True)
class LayoutDecision:
    """requested: the config's batch_layout; layout: what the run uses; family: the model
    type; reason: why; proofs: each layout proved on the run's rows, in order tried."""

    requested: str
    layout: str
    family: str
    reason: str
    proofs: tuple[LayoutProof, ...] = ()

    def line(self) -> str:
        proved = f"; {self.proofs[-1].line()}" if self.proofs else ""
        return f"layout: {self.layout} ({self.requested}: {self.reason}){proved}"

    def write(self, folder: str | Path) -> None:
        record = {**asdict(self), "proofs": [asdict(p) for p in self.proofs]}
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "layout.json").write_text(json.dumps(record, indent=1))


def decide_layout(m: ModelConfig, d: DataConfig, model_name: str, device_kind: str,
                  pairs: bool = True) -> LayoutDecision:
    """Before any weight is loaded: the family's rules on its modules (built on the meta
    device from the config), ``auto`` resolved, an explicit layout refused if not exact."""
    support = {"padded": None, "packed": None, "prefix_shared": None}
    name = "this model"
    if d.batch_layout != "padded":
        meta = meta_causal_lm(model_name, m.attn_implementation)
        name = family(meta)
        support = layout_support(meta, resolve_impl(m.attention_impl, device_kind))
    layout = choose_layout(d.batch_layout, support, pairs, name)
    refused = sorted({v for v in support.values() if v is not None})
    reason = f"exact for {name}" if not refused else \
        f"the fastest exact for {name}; packed rows refused: {'; '.join(refused)}"
    return LayoutDecision(d.batch_layout, layout, name, reason)


def proved(decision: LayoutDecision, policy, examples: Sequence, pad_token_id: int,
           d: DataConfig, log: Callable[[str], Any] = print) -> LayoutDecision:
    """The layout proved on up to 4 of the run's longest rows with the model as loaded; under
    ``auto`` a failing layout gives way to the next (prefix_shared -> packed -> padded); an
    explicit one, or padded itself (the head differs from the model's own), stops the run."""
    if not d.prove_layout or not len(examples):
        return decision
    rows, proofs, layout = proof_rows(examples), [], decision.layout
    while True:
        proof = prove_layout(policy, rows, layout, pad_token_id, d.max_row_tokens)
        proofs.append(proof)
        if proof.exact:
            return replace(decision, layout=layout, proofs=tuple(proofs))
        if decision.requested != "auto" or layout == "padded":
            raise LayoutRefused(
                f"batch_layout={layout} is not exact for {decision.family} on this run's rows: "
                f"{proof.line()}" + ("; dpokit's scoring differs from the model's own forward "
                                     "(an unknown logit transform?)" if layout == "padded" else
                                     "; use batch_layout=padded"))
        log(f"layout: {proof.line()}: not exact, trying {FALLBACK[layout]}")
        layout = FALLBACK[layout]
