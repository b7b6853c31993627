"""dpokit: Direct Preference Optimization and its family.

Layers (see docs/architecture.md): ``dpokit.data`` (load, validate, tokenize, collate) ->
``dpokit.policy`` (per-sequence log-probs) -> ``dpokit.losses`` -> ``dpokit.trainer``.
Heavy dependencies are imported only where they are used.
"""

__version__ = "0.1.0"
