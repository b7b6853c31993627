"""Build tiny trainers in-process for the trajectory tests."""

from __future__ import annotations

from functools import partial

from conftest import make_tiny_llama, sentiment_rows

from dpokit.config import load_config
from dpokit.data import TokenizeSettings, build_pairs, build_unpaired, collate_pairs
from dpokit.data.loading import Record
from dpokit.policy import CausalLMPolicy
from dpokit.trainer import Trainer, build_objective


def tiny_pairs(tokenizer, rows=None, unpaired=False, extra_columns=()):
    rows = rows if rows is not None else sentiment_rows()
    records = [Record("mem.jsonl", i + 1, r) for i, r in enumerate(rows)]
    settings = TokenizeSettings(max_length=64, max_prompt_length=32, extra_columns=extra_columns)
    return (build_unpaired if unpaired else build_pairs)(records, tokenizer, settings)


def tiny_trainer(tmp_path, tokenizer, model=None, rows=None, eval_rows=None, lora=False,
                 model_seed=0, **cfg):
    defaults = dict(output_dir=str(tmp_path / "out"), lora=lora, progress_bar=False,
                    tensorboard=False, precompute_ref_logps=False, learning_rate=1e-3,
                    batch_size=4, max_grad_norm=None)
    defaults.update(cfg)
    config = load_config(None, **defaults)
    model = model if model is not None else make_tiny_llama(len(tokenizer), seed=model_seed)
    reference = "copy"
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        reference = "adapter"
    objective = build_objective(config)
    if not objective.needs_reference:
        reference = "none"
    policy = CausalLMPolicy(model, tokenizer, reference=reference, chunk_size=8,
                            ld_alpha=config.ld_alpha,
                            segment_attention=config.segment_attention and config.batch_layout != "padded")
    kind = dict(unpaired=objective.unpaired, extra_columns=objective.extra_columns)
    train = tiny_pairs(tokenizer, rows, **kind)
    evaluation = tiny_pairs(tokenizer, eval_rows, **kind) if eval_rows is not None else None
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id,
                      layout=config.batch_layout, max_row_tokens=config.max_row_tokens)
    fps = (train.fingerprint(), evaluation.fingerprint() if evaluation else "")
    return Trainer(config, policy, train, collate, evaluation, data_fingerprints=fps,
                   log=lambda _: None)
