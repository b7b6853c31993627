"""Applications built on the library, each in its own folder with its data builder, command
line additions (``cli.register``, an entry point of the ``dpokit.apps`` group) and experiment:
``secalign`` (prompt-injection defence), ``llumi`` (community feedback to a support writer),
``gw_dpo`` (instruction-hierarchy conflicts for Gravity-Weighted DPO), ``amrs`` (a recommender
tuned offline on a world model) and ``worlds`` (the synthetic shape worlds of the image
experiments). The library never imports this package."""
