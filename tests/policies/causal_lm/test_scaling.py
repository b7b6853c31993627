"""Beyond one plain LoRA run: the LoRA family through peft (DoRA, rsLoRA, target modules,
merge on save), QLoRA's refusal on a CPU, activation offloading (same numbers), and what
FSDP2 refuses up front. (FSDP2 training itself: tests/test_distributed.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, sentiment_rows, write_jsonl
from helpers import tiny_pairs

from dpokit.config import ConfigError, load_config
from dpokit.data.text import PairCollator
from dpokit.policies.causal_lm import CausalLMPolicy
from dpokit.runs.causal_lm import build_run, policy_for


def _cfg(tmp_path, tiny_model_dir, **kw):
    data = write_jsonl(tmp_path / "pairs.jsonl", sentiment_rows(1))
    return load_config(None, **{"model.name": str(tiny_model_dir), "train_data": str(data),
                                "output_dir": str(tmp_path / "out"), "max_steps": 2,
                                "batch_size": 2, "learning_rate": 1e-2, "log_with": [],
                                "progress_bar": False, "max_length": 64,
                                "max_prompt_length": 32, "mixed_precision": "no", **kw})


@pytest.mark.parametrize("options", [{"use_dora": True}, {"use_rslora": True},
                                     {"lora_target_modules": ["q_proj", "v_proj"]},
                                     {"lora_target_modules": "all-linear"}])
def test_lora_family_options_reach_peft_and_train(tmp_path, tiny_model_dir, options):
    run = build_run(_cfg(tmp_path, tiny_model_dir, lora=True, **options))
    config = run.policy.model.peft_config["default"]
    names = [n for n, p in run.policy.model.named_parameters() if p.requires_grad]
    if "use_dora" in options:
        assert config.use_dora and any("lora_magnitude_vector" in n for n in names)
    if "use_rslora" in options:
        assert config.use_rslora
        layer = run.policy.model.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(32 / 16**0.5)  # alpha / sqrt(r)
    if options.get("lora_target_modules") == ["q_proj", "v_proj"]:
        assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}
    if options.get("lora_target_modules") == "all-linear":
        assert {"q_proj", "down_proj"} <= {n.split(".")[-4] for n in names}
    history = run.trainer.train().history
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_merge_adapter_writes_an_ordinary_model_with_the_adapters_function(tmp_path,
                                                                             tiny_model_dir):
    from transformers import AutoModelForCausalLM

    run = build_run(_cfg(tmp_path, tiny_model_dir, lora=True, merge_adapter=True,
                         learning_rate=5e-2))
    run.trainer.train()
    final = run.trainer.save_final()
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    run.policy.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, run.policy.model(ids).logits,
                                   rtol=1e-4, atol=1e-4)
        with run.policy.model.disable_adapter():  # the trained adapter moved the function
            assert not torch.allclose(merged(ids).logits, run.policy.model(ids).logits,
                                      atol=1e-4)


def test_qlora_on_a_cpu_says_what_is_missing(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, lora=True, quantization="4bit")
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*quantization=none"):
        policy_for(cfg)
    with pytest.raises(ConfigError, match="needs lora=true"):
        _cfg(tmp_path, tiny_model_dir, lora=False, quantization="4bit")


def test_activation_offloading_changes_no_number(tokenizer):
    from conftest import make_tiny_llama

    batch = PairCollator(tokenizer.pad_token_id)([*tiny_pairs(tokenizer)][:3])
    results = []
    for offload in (False, True):
        policy = CausalLMPolicy(make_tiny_llama(len(tokenizer)), tokenizer, chunk_size=8,
                                activation_offloading=offload)
        scores = policy.logps(batch)
        scores.logps.sum().backward()
        results.append((scores.logps.detach(),
                        [p.grad.clone() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharding_refuses_what_runs_outside_the_sharded_forward(tmp_path, tiny_model_dir,
                                                                strategy):
    for key, value in (("run.eval_prompts", "p.jsonl"), ("geometry.probes", "p.jsonl"),
                       ("model.merge_adapter", True)):
        with pytest.raises(ConfigError, match=f"strategy={strategy}: {key}"):
            _cfg(tmp_path, tiny_model_dir, lora=True, strategy=strategy, **{key: value})
    _cfg(tmp_path, tiny_model_dir, strategy=strategy)  # plain training is fine
    with pytest.raises(ConfigError, match="zero_stage must be <= 3"):
        _cfg(tmp_path, tiny_model_dir, strategy=strategy, zero_stage=4)


def test_deepspeed_config_takes_dpokits_fields_and_refuses_conflicts(tmp_path, monkeypatch):
    """The batch sizes, clipping, stage and precision come from dpokit's config; the file
    adds the rest; a value it sets for a field dpokit owns is an error naming that field."""
    from dpokit.train.engines import DeepSpeedConfigError, deepspeed_config

    root = REPO
    for name in ("zero2", "zero3", "zero3_offload"):  # the shipped files are all valid
        cfg = deepspeed_config(3, str(root / "configs" / "deepspeed" / f"{name}.json"),
                               batch_size=2, world=4, max_grad_norm=None)
        assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"]) == (8, 2)
        assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 0.0
        assert cfg["zero_optimization"]["stage"] == 3
    offload = deepspeed_config(3, str(root / "configs/deepspeed/zero3_offload.json"),
                               batch_size=1, world=1, max_grad_norm=1.0)
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    bad = tmp_path / "ds.json"
    for content, field in (({"gradient_clipping": 0.5}, "gradient_clipping"),
                           ({"bf16": {"enabled": True}}, "bf16"),
                           ({"optimizer": {"type": "Adam"}}, "optimizer"),
                           ({"zero_optimization": {"stage": 2}}, "zero_optimization.stage")):
        bad.write_text(json.dumps(content))
        with pytest.raises(DeepSpeedConfigError, match=rf"ds.json: {field}"):
            deepspeed_config(3, str(bad), batch_size=2, world=1, max_grad_norm=1.0)
    bad.write_text(json.dumps({"bf16": {"enabled": False}, "steps_per_print": 5}))
    assert deepspeed_config(2, str(bad), batch_size=2, world=1,
                            max_grad_norm=1.0)["steps_per_print"] == 5
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(bad))  # accelerate launch's
    assert deepspeed_config(2, None, batch_size=2, world=1,
                            max_grad_norm=1.0)["steps_per_print"] == 5
    bad.write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match="ds.json"):
        deepspeed_config(2, str(bad), batch_size=2, world=1, max_grad_norm=1.0)
