"""Defaults that follow what the user set (``setting(..., follows=Follows(...))``): an unset
budget derived from the one the user gave, said on the run's first line; only two explicit
values that contradict each other are an error."""

from __future__ import annotations

import dataclasses

import pytest

from dpokit.config import ConfigError, load_config
from dpokit.config.schema import SECTIONS


def test_every_declared_default_equals_its_rule_at_the_other_default():
    """So that `dpokit config` shows what an untouched config holds, and no run changes by
    adding the rule."""
    followed = 0
    for cls in SECTIONS.values():
        defaults = cls()
        for f in dataclasses.fields(cls):
            follows = f.metadata.get("follows")
            if follows is not None:
                followed += 1
                assert getattr(defaults, f.name) == follows.rule(
                    getattr(defaults, follows.source)), f.name
    assert followed >= 2
    assert load_config(None).derived == ()


def test_unset_budgets_follow_the_set_ones_and_explicit_values_win():
    cfg = load_config(None, ["max_length=64"])
    assert cfg.data.max_prompt_length == 32
    assert cfg.derived == ("max_prompt_length=32 (half of max_length=64)",)
    assert load_config(None, ["max_length=64", "max_prompt_length=48"]).data.max_prompt_length \
        == 48
    assert load_config(None, ["max_length=2048"]).data.max_prompt_length == 1024
    with pytest.raises(ConfigError, match="max_prompt_length=64 leaves no room for a "
                                          "completion in max_length=64"):
        load_config(None, ["max_length=64", "max_prompt_length=64"])
    # where the followed value still cannot work, the error says it was derived
    with pytest.raises(ConfigError, match=r"^max_prompt_length=1 \(half of max_length=1\) "
                                          r"leaves no room"):
        load_config(None, ["max_length=1"])
    lora = load_config(None, ["lora_r=4"])
    assert (lora.model.lora_r, lora.model.lora_alpha) == (4, 8)
    assert "lora_alpha=8 (2 x lora_r=4)" in lora.derived
    assert load_config(None, ["lora_r=4", "lora_alpha=4"]).model.lora_alpha == 4
    # a recipe's value is as explicit as the command line's
    assert load_config(None, **{"max_length": 100}).data.max_prompt_length == 50
