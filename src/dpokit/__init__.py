"""dpokit: Direct Preference Optimization and its family, and SFT, on one training loop.

Layers (see docs/architecture.md): ``core`` (types, protocols) <- ``losses``, ``objectives``,
``data``, ``train`` (the generic loop and its services) <- ``policies/<modality>`` <-
``pipeline`` and ``cli`` (the application). Heavy dependencies are imported only where used.
"""

__version__ = "0.2.0"
