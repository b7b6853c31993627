"""dpokit: Direct Preference Optimization and its family, and SFT, on one training loop.

Floors (see docs/architecture.md), each importing only from those below it: ``core`` (types,
protocols, hardware, signals) <- ``losses`` <- ``objectives``, ``data`` <- ``config`` <-
``train`` (the generic loop and its services) <- ``data.text``, ``policies/<modality>`` <-
``eval`` <- ``runs`` (run builders) <- ``cli`` <- ``apps`` (applications). Heavy dependencies
are imported only where used.
"""

__version__ = "0.2.0"
