"""The names (and values) under which a trained model's tensors reach a serving engine
(:func:`engine_weights`) against the model's own checkpoint names, the keys of the
``model.safetensors`` that ``save_pretrained`` writes, for a full model, a LoRA model and a
LoRA model with ``modules_to_save`` layers (issue 44: a trained non-LoRA tensor under a peft
name is a tensor the engine never loads)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from dpokit.policies.causal_lm.samplers import engine_weights

VOCAB = 64


def checkpoint_names(model, tmp_path) -> set[str]:
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    return set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))


def perturb(model, which: str, by: float = 0.25) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if which in name:
                p.add_(by)


@pytest.mark.parametrize("tied", [False, True])
def test_a_full_model_reaches_the_engine_under_its_checkpoint_names(tmp_path, tied):
    model = make_tiny_llama(VOCAB, tie_word_embeddings=tied)
    weights = engine_weights(model)
    assert set(weights) == checkpoint_names(model, tmp_path)
    for name, p in model.named_parameters():
        assert torch.equal(weights[name], p) and not weights[name].requires_grad


@pytest.mark.parametrize("save", [[], ["lm_head"], ["embed_tokens", "lm_head"]])
def test_lora_and_modules_to_save_reach_the_engine_under_the_base_names(tmp_path, save):
    """LoRA layers on the attention; ``modules_to_save`` trained in full: every tensor under
    the plain model's checkpoint name, the trained copies' values (not the originals'), each
    LoRA layer as W + scaling * B A."""
    base = make_tiny_llama(VOCAB)
    names = checkpoint_names(base, tmp_path)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=save or None))
    perturb(model, "lora_B")
    perturb(model, "modules_to_save", by=0.5)  # the trained copies move, the originals stay
    weights = engine_weights(model)
    assert set(weights) == names
    for name in names:
        module = name.rpartition(".")[0]
        if any(module.endswith(s) for s in save):  # the trained copy
            torch.testing.assert_close(weights[name], original[name] + 0.5, rtol=0, atol=1e-6)
        elif module.endswith(("q_proj", "v_proj")):  # W + (alpha / r) * B A
            layer = model.get_submodule("base_model.model." + module)
            delta = 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            torch.testing.assert_close(weights[name], original[name] + delta, rtol=1e-6,
                                       atol=1e-6)
            assert not torch.equal(weights[name], original[name])
        else:
            assert torch.equal(weights[name], original[name]), name
    merged = model.merge_and_unload()  # the same model, merged by peft: it computes the same
    ids = torch.tensor([[1, 5, 9, 2]])
    engine = make_tiny_llama(VOCAB, seed=7)
    engine.load_state_dict(weights)
    torch.testing.assert_close(engine(ids).logits, merged(ids).logits, rtol=1e-5, atol=1e-5)


def test_with_the_adapter_off_the_engine_gets_the_base_model(tmp_path):
    """The reference (adapters disabled): neither the LoRA deltas nor the trained copies."""
    base = make_tiny_llama(VOCAB)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                            modules_to_save=["lm_head"]))
    perturb(model, "lora_B")
    perturb(model, "modules_to_save")
    with model.disable_adapter():
        weights = engine_weights(model)
        ids = torch.tensor([[1, 5, 9, 2]])
        off = model(input_ids=ids).logits
    assert set(weights) == set(original)
    engine = make_tiny_llama(VOCAB, seed=7)
    engine.load_state_dict(weights)
    torch.testing.assert_close(engine(ids).logits, off, rtol=1e-5, atol=1e-5)
