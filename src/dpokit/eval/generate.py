"""Before/after comparisons: held-out figures and sample generations.

    >>> texts = generate(policy, ["In one sentence, praise a movie."])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ..core.protocols import Policy


def generate(policy: Policy, prompts: list[Any], **options: Any) -> list[Any]:
    """Samples from a policy that declares ``generation`` (greedy by default)."""
    if not policy.capabilities.generation:
        raise ValueError(f"{type(policy).__name__} does not declare generation")
    return policy.generate(prompts, **options)


PREFERENCE_ROWS = [
    ("preference accuracy (own log-prob ranking)", "eval/logp_accuracy", "{:.3f}"),
    ("  same, log-prob per token", "eval/logp_accuracy_per_token", "{:.3f}"),
    ("implicit-reward accuracy", "eval/rewards/accuracies", "{:.3f}"),
    ("mean implicit-reward margin", "eval/rewards/margins", "{:+.4f}"),
    ("DPO loss", "eval/loss", "{:.4f}"),
    ("mean log-prob, chosen", "eval/logps/chosen", "{:.2f}"),
    ("mean log-prob, rejected", "eval/logps/rejected", "{:.2f}"),
]
SFT_ROWS = [("completion NLL per token", "eval/loss", "{:.4f}")]


def comparison_table(before: dict, after: dict, rows=None) -> str:
    """A small text table of held-out figures before and after training."""
    rows = rows or PREFERENCE_ROWS
    width = max(len(r[0]) for r in rows)
    lines = [f"{'held-out figure':<{width}}  {'before':>9}  {'after':>9}"]
    for label, key, fmt in rows:
        lines.append(f"{label:<{width}}  {fmt.format(before[key]):>9}  {fmt.format(after[key]):>9}")
    return "\n".join(lines)
