"""Before/after comparisons: held-out figures and sample generations.

    >>> texts = generate(policy, ["In one sentence, praise a movie."])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ..core.catalogue import table
from ..core.protocols import Policy


def generate(policy: Policy, prompts: list[Any], **options: Any) -> list[Any]:
    """Samples from a policy that declares ``generation`` (greedy by default)."""
    if not policy.capabilities.generation:
        raise ValueError(f"{type(policy).__name__} does not declare generation")
    return policy.generate(prompts, **options)


# the quickstart's before / after table (labels and formats: the metric catalogue)
PREFERENCE_KEYS = ("eval/logp_accuracy", "eval/logp_accuracy_per_token",
                   "eval/rewards/accuracies", "eval/rewards/accuracies_strict",
                   "eval/rewards/margins", "eval/loss", "eval/logps/chosen", "eval/logps/rejected")
STRICT = {"eval/rewards/accuracies_strict": "eval/rewards/accuracies"}  # shown where it differs


def comparison_table(before: dict, after: dict, keys=PREFERENCE_KEYS) -> str:
    """A small text table of held-out figures before and after training; TRL's strict
    accuracy (ties counted wrong) only where a tie makes it differ from ours (ties: half)."""
    columns = {"before": before, "after": after}
    keys = [k for k in keys if k not in STRICT or any(
        c.get(k) is not None and c.get(k) != c.get(STRICT[k]) for c in columns.values())]
    return table(after, columns, keys)
