"""Build tiny trainers in-process for the trajectory tests."""

from __future__ import annotations

from conftest import make_tiny_llama, sentiment_rows

from dpokit.config import load_config
from dpokit.data.io import Record
from dpokit.data.text import (
    PairCollator,
    SequenceCollator,
    TokenizeSettings,
    build_pairs,
    build_sequences,
    build_unpaired,
)
from dpokit.objectives import SFTObjective, build_objective
from dpokit.policies.causal_lm import CausalLMPolicy
from dpokit.train import EvalSet, StaticSource, make_trainer

# fp32 on every host (auto would pick bf16 where the CPU computes it natively): the tolerances of
# the exact comparisons are fp32's; a test of bf16 sets mixed_precision=bf16, with BF16's
TEST_DEFAULTS = dict(lora=False, progress_bar=False, log_with=[], precompute_ref_logps=False,
                     eval_before=False, mixed_precision="no",
                     learning_rate=1e-3, batch_size=4, max_grad_norm=None)


# bf16 keeps 8 significand bits (7 stored): unit roundoff u = 2^-8 = 3.9e-3. Under autocast each
# matmul rounds what it reads and writes to bf16 (relative error <= u each time), the loss math
# and the weights stay fp32. Two computations of one step that group the roundings differently
# (micro-batches, processes: each rounds its own partial weight gradient X^T dY) differ by up to
# 2u per side, so BF16 = 4u = 1.6e-2, relative to a value, or to a gradient's largest element.
# A computation repeated as it was (resume == uninterrupted in one process) rounds the same
# numbers the same way: it equals bit for bit, in bf16 too.
U_BF16 = 2.0**-8
BF16 = 4 * U_BF16


def records(rows) -> list[Record]:
    return [Record("mem.jsonl", i + 1, r) for i, r in enumerate(rows)]


def tiny_pairs(tokenizer, rows=None, unpaired=False, extra_columns=()):
    rows = rows if rows is not None else sentiment_rows()
    settings = TokenizeSettings(max_length=64, max_prompt_length=32, extra_columns=extra_columns)
    return (build_unpaired if unpaired else build_pairs)(records(rows), tokenizer, settings)


def tiny_config(tmp_path, **cfg):
    return load_config(None, **{**TEST_DEFAULTS, "output_dir": str(tmp_path / "out"), **cfg})


def layout_of(config, model, pairs: bool = True) -> str:
    """The config's batch layout, ``auto`` resolved for ``model`` as a run builder does."""
    from dpokit.policies.causal_lm.families import choose_layout, layout_support

    return choose_layout(config.data.batch_layout, layout_support(model), pairs)


def sources(config, train, evaluation, collate):
    source = StaticSource(train, collate, config.optim.batch_size, config.optim.grad_accum_steps,
                          config.optim.seed, config.data.shuffle, train.fingerprint(),
                          collate.key)
    eval_set = None
    if evaluation is not None:
        eval_set = EvalSet(evaluation, collate, config.run.eval_batch_size,
                           evaluation.fingerprint(), collate.key)
    return source, eval_set


def lora_model(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))


def tiny_trainer(tmp_path, tokenizer, model=None, rows=None, eval_rows=None, lora=False,
                 model_seed=0, **cfg):
    config = tiny_config(tmp_path, lora=lora, **cfg)
    model = model if model is not None else make_tiny_llama(len(tokenizer), seed=model_seed)
    reference = "copy"
    if lora:
        model = lora_model(model)
        reference = "adapter"
    objective = build_objective(config.loss)
    if not objective.needs_reference:
        reference = "none"
    policy = CausalLMPolicy(model, tokenizer, reference=reference, chunk_size=8,
                            ld_alpha=config.loss.ld_alpha,
                            sampo_seed=config.optim.seed if config.loss.sampo else None,
                            attention_impl=config.model.attention_impl)
    kind = dict(unpaired=objective.unpaired, extra_columns=objective.extra_columns)
    train = tiny_pairs(tokenizer, rows, **kind)
    evaluation = tiny_pairs(tokenizer, eval_rows, **kind) if eval_rows is not None else None
    collate = PairCollator(tokenizer.pad_token_id, layout_of(config, model),
                           config.data.max_row_tokens)
    source, eval_set = sources(config, train, evaluation, collate)
    return make_trainer(config, policy, objective, source, eval_set, log=lambda _: None)


def tiny_sft_trainer(tmp_path, tokenizer, rows, eval_rows=None, model=None, lora=False, **cfg):
    config = tiny_config(tmp_path, lora=lora, **cfg)
    model = model if model is not None else make_tiny_llama(len(tokenizer))
    if lora:
        model = lora_model(model)
    settings = TokenizeSettings(max_length=64, max_prompt_length=32)
    train = build_sequences(records(rows), tokenizer, settings)
    evaluation = build_sequences(records(eval_rows), tokenizer, settings) if eval_rows else None
    policy = CausalLMPolicy(model, tokenizer, chunk_size=8,
                            attention_impl="sdpa_segments")
    collate = SequenceCollator(tokenizer.pad_token_id, layout_of(config, model, pairs=False))
    source, eval_set = sources(config, train, evaluation, collate)
    return make_trainer(config, policy, SFTObjective(), source, eval_set, log=lambda _: None)


def brevity_reward(prompt, completion) -> float:
    """A reward a tiny model can learn: shorter answers score higher (0 for an empty one)."""
    return -float(len(completion))


def crash_after(trainer, step: int) -> None:
    """Train ``trainer`` until it is about to run step ``step + 1``, then crash it there (a
    KeyboardInterrupt with no checkpoint of its own, as kill -9 would leave the folder)."""
    import pytest

    original = trainer._train_step

    def step_or_crash():
        if trainer.step == step:
            raise KeyboardInterrupt
        return original()

    trainer._train_step = step_or_crash
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def image_redness(images, prompts):
    """An image reward for the CLI tests: how much redder than green and blue, (N,)."""
    return (images[:, 0] - images[:, 1:].mean(1)).mean((1, 2))
