"""Gravity-Weighted DPO's data (instruction-hierarchy conflicts): ``hierarchy`` (privilege
levels, program-checkable constraints, conflicts, benign and aligned samples, their checks
and the adherence matrix), ``build_data`` (``data/hierarchy_pairs.{train,eval}.jsonl``). The
loss is :mod:`dpokit.losses.gravity`; the experiment ``experiments/gw_dpo.py``."""
