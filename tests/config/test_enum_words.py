"""Every enum field of the config takes every one of its values, spelled as YAML 1.1 would read
them (`no`, `off`, `null`), from the command line and from a recipe."""

import typing

import pytest

from dpokit.config import ConfigError, load_config
from dpokit.config.schema import SECTIONS


def _enum_fields():
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for name, hint in hints.items():
            options = typing.get_args(hint) if isinstance(hint, type(int | None)) else (hint,)
            for option in options:
                if typing.get_origin(option) is typing.Literal:
                    yield section, name, typing.get_args(option)


ENUMS = list(_enum_fields())


def test_every_enum_field_is_found():
    names = {name for _, name, _ in ENUMS}
    assert {"mixed_precision", "device", "attention_impl", "mode", "quantization",
            "batch_layout", "regularizer", "wpo", "ref_precision"} <= names


@pytest.mark.parametrize("section,name,allowed", ENUMS, ids=[f"{s}.{n}" for s, n, _ in ENUMS])
def test_every_enum_value_works_from_the_command_line(section, name, allowed):
    """`no`, `off`, `on`, `yes`, `null` are booleans / None to YAML: each value still reaches
    its field, as `key=value` and as `section.key=value`."""
    for value in allowed:
        for key in (name, f"{section}.{name}"):
            try:
                cfg = load_config(None, [f"{key}={value}"])
            except ConfigError as err:  # a combination rule, not the spelling
                assert "must be one of" not in str(err) and "is not a" not in str(err), err
                continue
            assert getattr(getattr(cfg, section), name) == value


def test_yaml_words_in_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("mixed_precision: no\nonline:\n  mode: off\nwpo: off\nquantization: null\n")
    cfg = load_config(recipe)
    assert (cfg.optim.mixed_precision, cfg.online.mode, cfg.loss.wpo,
            cfg.model.quantization) == ("no", "off", "off", "none")
    with pytest.raises(ConfigError, match="mixed_precision=True: must be one of"):
        load_config(None, ["mixed_precision=yes"])
