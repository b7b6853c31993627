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
                   "eval/rewards/accuracies", "eval/rewards/margins", "eval/loss",
                   "eval/logps/chosen", "eval/logps/rejected")


def comparison_table(before: dict, after: dict, keys=PREFERENCE_KEYS) -> str:
    """A small text table of held-out figures before and after training."""
    return table(after, {"before": before, "after": after}, keys)
