"""The recipe/override config and the `dpokit train` command on a tiny model folder."""

import json

import pytest
from conftest import REPO, sentiment_rows, unpaired_rows, write_jsonl

from dpokit.cli import main
from dpokit.config import ConfigError, load_config


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: ipo\nbeta: 0.5\nlearning_rate: 1e-5\nlora_target_modules: [q_proj]\n")
    cfg = load_config(recipe, ["beta=0.25", "max_steps=7"])
    assert (cfg.loss.name, cfg.loss.beta, cfg.optim.learning_rate, cfg.optim.max_steps) == (
        "ipo", 0.25, 1e-5, 7)
    assert cfg.model.lora_target_modules == ["q_proj"]


def test_sectioned_recipe_and_dotted_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: tiny, lora: false}\nloss:\n  name: [sigmoid, sft]\n"
                      "  loss_weights: [1, 0.5]\n  beta: 0.3\noptim: {batch_size: 2}\n")
    cfg = load_config(recipe, ["loss.beta=0.4", "optim.seed=3", "simpo_gamma=0.7"])
    assert (cfg.model.name, cfg.model.lora) == ("tiny", False)
    assert cfg.loss.name == ["sigmoid", "sft"] and cfg.loss.loss_weights == [1.0, 0.5]
    assert (cfg.loss.beta, cfg.optim.seed, cfg.optim.batch_size) == (0.4, 3, 2)
    assert cfg.loss.simpo_gamma == 0.7  # a hyper-parameter declared by the simpo loss
    with pytest.raises(ConfigError, match="did you mean 'loss.beta'"):
        load_config(None, ["loss.bta=1"])
    with pytest.raises(ConfigError, match="did you mean 'optim.seed'"):
        load_config(None, ["optim.sed=1"])


def test_every_field_is_listed_with_its_meaning(capsys):
    from dpokit.config import TrainConfig
    from dpokit.losses import declared_params

    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for section in ("model", "data", "loss", "optim", "run", "distributed"):
        assert f"[{section}]" in out
    for name in declared_params():  # loss hyper-parameters come from the losses' declarations
        assert f"  {name} = " in out
    cfg = TrainConfig()
    assert f"  learning_rate = {cfg.optim.learning_rate!r} in (0, inf)" in out
    assert "AdamW peak learning rate" in out


@pytest.mark.parametrize("override,match", [
    ("beta=0", "beta must be > 0"), ("learning_rate=-1e-5", "learning_rate must be > 0"),
    ("max_steps=0", "max_steps must be >= 1"), ("num_epochs=0", "num_epochs must be > 0"),
    ("warmup_ratio=1.5", "warmup_ratio must be <= 1"),
    ("label_smoothing=0.5", "label_smoothing must be < 0.5"),
    ("discopop_tau=0", "discopop_tau must be > 0"), ("batch_size=0", "batch_size must be >= 1"),
    ("max_prompt_length=600", "leaves no room for a completion"),
    ("loss_weights=[1,2]", "loss_weights has 2 values for 1 losses"),
])
def test_out_of_range_values_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("text,match", [
    ("learnin_rate: 0.1\n", r"r.yaml: unknown key 'learnin_rate'; did you mean 'learning_rate'"),
    ("batch_size: two\n", "batch_size='two' is not"),
    ("lr_scheduler: linea\n", "must be one of"),
    ("loss: {bta: 1}\n", "unknown key 'loss.bta'; did you mean 'loss.beta'"),
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
                 "progress_bar=false", "log_with=[]", "learning_rate=1e-3"])
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 3]  # eval before, 3 steps, eval after
    assert "eval/loss" in lines[0]
    assert "eval/rewards/accuracies" in lines[-1]
    assert (out / "final" / "config.json").is_file()
    card = (out / "final" / "README.md").read_text()  # the model card
    assert f"base_model: {tiny_model_dir}" in card and "`sigmoid`" in card
    assert "| `beta` | `0.1` |" in card and "eval/rewards/accuracies" in card
    assert (out / "checkpoints" / "step-0000002" / "trainable.safetensors").is_file()
    text = capsys.readouterr().out
    # 12 rows over 2 prompts; the split is by prompt, so one prompt's 6 rows are held out
    assert text.count("6 pairs kept") == 2


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
                 f"ref_cache_dir={tmp_path / 'cache'}", "progress_bar=false", "log_with=[]"])
    assert code == 0, capsys.readouterr().err
    assert "24 unpaired rows kept" in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]


@pytest.mark.parametrize("recipe", sorted(
    p.name for p in (REPO / "src" / "dpokit" / "recipes").glob("*.yaml")
    if p.name != "recommender.yaml"))  # (the recommender's recipe has its own loader)
def test_every_shipped_recipe_loads(recipe):
    load_config(str(REPO / "src" / "dpokit" / "recipes" / recipe), [])
