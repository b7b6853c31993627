"""What every run builder shares: the reference a run gets, the rows a loss needs."""

import pytest

from dpokit.data import DataError


def test_loss_needing_reference_refused_without_one(tmp_path, tokenizer):
    from dpokit.config import load_config
    from dpokit.objectives import build_objective
    from dpokit.runs.common import resolve_reference as resolve

    def resolve_reference(cfg):
        return resolve(cfg.model, build_objective(cfg.loss).needs_reference, cfg.loss.name)


    with pytest.raises(ValueError, match="needs a reference"):
        resolve_reference(load_config(None, loss="sigmoid", reference="none"))
    assert resolve_reference(load_config(None, loss="simpo")) == "none"
    assert resolve_reference(load_config(None, loss="ipo", lora=False)) == "copy"
    assert resolve_reference(load_config(None, loss="ipo", lora=True)) == "adapter"


def test_loss_needing_a_column_is_refused_without_it(tmp_path, tokenizer):
    from dpokit.config import load_config
    from dpokit.runs.causal_lm import load_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cfg = load_config(None, loss="odpo", train_data=str(path), eval_data=None)
    with pytest.raises(DataError, match=r"pairs.jsonl, row 1, field 'offset': missing column"):
        load_pairs(cfg.data, cfg.loss, cfg.optim.seed, tokenizer, log=lambda _: None)


def test_one_rule_chooses_the_tokenizer_for_every_run_kind(tmp_path):
    """model.tokenizer when set; an adapter folder's own tokenizer when it saved one, else its
    base's; else the model (online runs took the adapter folder itself, without a tokenizer)."""
    import json

    from dpokit.config import load_config
    from dpokit.runs.common import tokenizer_name
    from dpokit.runs.loading import tokenizer_source

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
    assert tokenizer_source(str(adapter)) == "base"
    assert tokenizer_source(str(adapter), "mine") == "mine"
    (adapter / "tokenizer_config.json").write_text("{}")
    assert tokenizer_source(str(adapter)) == str(adapter)
    assert tokenizer_source("some/model") == "some/model"
    cfg = load_config(None, [f"model={adapter}", "output_dir=unused"])
    assert tokenizer_name(cfg.model) == str(adapter)
