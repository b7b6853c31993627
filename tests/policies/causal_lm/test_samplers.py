"""The sampler protocol: the weight-sync contract of the vLLM sampler, checked on the CPU
against a fake engine that serves a model of its own built only from what it was sent, and
the refusal of vllm off CUDA."""

import copy

import pytest
import torch
from conftest import make_tiny_llama, write_jsonl
from peft import LoraConfig, get_peft_model

from dpokit.cli import main
from dpokit.config.schema import SAMPLERS as CONFIG_SAMPLERS
from dpokit.policies.causal_lm.samplers import (
    SAMPLERS,
    HFSampler,
    VLLMSampler,
    engine_weights,
    make_sampler,
)
from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions

GREEDY = SamplingSettings(num_samples=2, max_new_tokens=6, temperature=0.0, chat=False)
PROMPTS = ["the film was", "a quiet night", "hi"]


def lora_model(vocab: int, tied: bool = False):
    model = get_peft_model(make_tiny_llama(vocab, tie_word_embeddings=tied),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # B starts at 0 (no delta): give the adapter something to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


class FakeEngine:
    """A serving engine: its own model of the same architecture (other initial weights),
    into which ``load_weights`` must write every tensor, by the checkpoint's names."""

    def __init__(self, vocab: int, tokenizer, tied: bool = False):
        self.model = make_tiny_llama(vocab, seed=99, tie_word_embeddings=tied)
        self.tokenizer, self.loads = tokenizer, []

    def load_weights(self, weights):
        weights = dict(weights)
        own = dict(self.model.named_parameters())
        assert set(weights) == set(own), set(weights) ^ set(own)
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)
        self.loads.append({n: v.clone() for n, v in weights.items()})

    def generate(self, prompts, settings):
        out = []
        for ids in prompts:
            drawn = self.model.generate(torch.tensor([ids]), max_new_tokens=settings.max_new_tokens,
                                        do_sample=False, num_return_sequences=1,
                                        pad_token_id=self.tokenizer.pad_token_id)
            out.append([drawn[0, len(ids):].tolist()] * settings.num_samples)
        return out


def test_the_config_offers_exactly_the_samplers_there_are():
    assert CONFIG_SAMPLERS == SAMPLERS


@pytest.mark.parametrize("tied", [False, True])
def test_engine_weights_are_the_merged_model_under_checkpoint_names(tokenizer, tied):
    """Names: the plain model's; values: peft's merge_and_unload of a copy; the training
    model itself untouched, bit for bit (no merge and unmerge in place)."""
    model = lora_model(len(tokenizer), tied)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = engine_weights(model)
    merged = copy.deepcopy(model).merge_and_unload()
    expected = dict(merged.named_parameters())
    assert set(weights) == set(expected)
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name].detach(), atol=1e-6, rtol=1e-6)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    with model.disable_adapter():  # the reference: the base weights as they are
        base = engine_weights(model)
    plain = {n.removeprefix("base_model.model.").replace(".base_layer", ""): v
             for n, v in before.items() if "lora_" not in n}
    assert all(torch.equal(base[n], plain[n]) for n in base)
    assert not all(torch.equal(weights[n], plain[n]) for n in weights)  # the delta is there


def test_the_vllm_sampler_samples_what_the_model_samples_now(tokenizer):
    """Greedy samples through the fake engine equal Hugging Face generate on the training
    model; after the weights change (a training step), the next call loads them again."""
    model = lora_model(len(tokenizer))
    engine = FakeEngine(len(tokenizer), tokenizer)
    sampler = VLLMSampler(engine_factory=lambda m: engine)
    got = sampler(model, tokenizer, PROMPTS, GREEDY)
    want = HFSampler()(model, tokenizer, PROMPTS, GREEDY)
    assert [[s.token_ids for s in g] for g in got] == [[s.token_ids for s in g] for g in want]
    assert [[s.text for s in g] for g in got] == [[s.text for s in g] for g in want]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.add_(0.3)
    again = sampler(model, tokenizer, PROMPTS, GREEDY)
    assert sampler.syncs == 2 and len(engine.loads) == 2
    now = sample_completions(model, tokenizer, PROMPTS, GREEDY)
    assert [[s.token_ids for s in g] for g in again] == [[s.token_ids for s in g] for g in now]
    changed = [n for n in engine.loads[0] if not torch.equal(engine.loads[0][n],
                                                             engine.loads[1][n])]
    assert changed and all(n.endswith("proj.weight") for n in changed), changed


def test_vllm_is_refused_off_cuda_with_the_reason(tmp_path, tiny_model_dir, capsys):
    from dpokit.config import ConfigError, load_config

    with pytest.raises(ValueError, match="sampler=vllm runs a vLLM engine on a CUDA GPU"):
        make_sampler("vllm", "cpu")
    for overrides, reason in ((["sampler=vllm", "device=cpu"], "use sampler=hf"),
                              (["sampler=vllm", "lora=true", "quantization=4bit"], "QLoRA"),
                              (["sampler=vllm", "strategy=fsdp"], "online.sampler")):
        with pytest.raises(ConfigError, match=reason):
            load_config(None, overrides)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}])
    code = main(["pairs", "sample", str(prompts), "--model", str(tiny_model_dir),
                 "--sampler", "vllm", "--out", str(tmp_path / "pairs.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "use sampler=hf" in err[0]
    assert not (tmp_path / "pairs.jsonl").exists()
