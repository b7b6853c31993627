"""The recipe/override config and the `dpokit train` command on a tiny model folder."""

import json

import pytest
from conftest import sentiment_rows, unpaired_rows, write_jsonl

from dpokit.cli import main
from dpokit.config import ConfigError, load_config


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: ipo\nbeta: 0.5\nlearning_rate: 1e-5\nlora_target_modules: [q_proj]\n")
    cfg = load_config(recipe, ["beta=0.25", "max_steps=7"])
    assert (cfg.loss, cfg.beta, cfg.learning_rate, cfg.max_steps) == ("ipo", 0.25, 1e-5, 7)
    assert cfg.lora_target_modules == ["q_proj"]


@pytest.mark.parametrize("text,match", [
    ("learnin_rate: 0.1\n", r"r.yaml: unknown key 'learnin_rate'; did you mean 'learning_rate'"),
    ("batch_size: two\n", "batch_size='two' is not"),
    ("lr_scheduler: linea\n", "must be one of"),
    ("- a list\n", "a recipe is a mapping"),
])
def test_bad_recipes(tmp_path, text, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(recipe)


def test_unknown_override_suggests():
    with pytest.raises(ConfigError, match="did you mean 'grad_accum_steps'"):
        load_config(None, ["grad_acum_steps=2"])


def test_cli_train_end_to_end(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    out = tmp_path / "run"
    code = main(["train", f"model={tiny_model_dir}", f"train_data={data}", "eval_data=null",
                 "eval_fraction=0.25", "lora=false", "max_steps=3", "batch_size=2",
                 f"output_dir={out}", f"ref_cache_dir={tmp_path / 'cache'}", "save_every=2",
                 "progress_bar=false", "tensorboard=false", "learning_rate=1e-3"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 3]
    assert "eval/rewards/accuracies" in lines[-1]
    assert (out / "final" / "config.json").is_file()
    assert (out / "checkpoints" / "step-0000002" / "trainable.safetensors").is_file()
    text = capsys.readouterr().out
    assert "9 pairs kept" in text and "3 pairs kept" in text  # 12 rows, 25% held out


def test_cli_reports_errors_cleanly(tmp_path, tiny_model_dir, capsys):
    assert main(["train", "model=no-such-org/no-such-model-xyz", "progress_bar=false"]) == 2
    err = capsys.readouterr().err
    assert "not a local folder" in err and "no-such-org/no-such-model-xyz" in err
    assert main(["train", "bogus_key=1"]) == 2
    assert "unknown key 'bogus_key'" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a"}])
    assert main(["train", f"model={tiny_model_dir}", f"train_data={bad}", "eval_data=null"]) == 2
    assert "bad.jsonl, row 1, field 'rejected': missing column" in capsys.readouterr().err


def test_cli_lists_losses(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in ("sigmoid", "robust", "ipo", "hinge", "simpo"):
        assert name in out


def test_cli_trains_kto_on_unpaired_rows(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "unpaired.jsonl", unpaired_rows(sentiment_rows(1)))
    out = tmp_path / "run"
    code = main(["train", f"model={tiny_model_dir}", f"train_data={data}", "eval_data=null",
                 "loss=kto", "lora=false", "max_steps=2", "batch_size=4", f"output_dir={out}",
                 f"ref_cache_dir={tmp_path / 'cache'}", "progress_bar=false", "tensorboard=false"])
    assert code == 0, capsys.readouterr().err
    assert "24 unpaired rows kept" in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
