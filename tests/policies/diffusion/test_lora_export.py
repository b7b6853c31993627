"""The LoRA adapter of a pipeline's denoiser, exported to final/ (issue 44): diffusers'
``load_lora_weights(final)`` applies it at its own scale alpha / r, so the pipeline's denoiser
computes what dpokit's trained policy computes; dpokit's own loader of final/ reads it back
at that scale too (not twice). r != alpha here (r 4, alpha 8: scale 2), where an export
without the adapter's alpha acts at half strength in diffusers (scale 1). Tiny SD 1.x, SDXL
and SD3 pipelines built and saved in-process; fp32."""

from __future__ import annotations

import pytest
import torch
from test_pipeline_cli import tiny_pipeline
from test_pipeline_more import tiny_sd3_pipeline, tiny_sdxl_pipeline

pytest.importorskip("diffusers")

from dpokit.policies.diffusion import policy as policy_module  # noqa: E402
from dpokit.policies.diffusion.pipeline import load_pipeline, load_trained  # noqa: E402
from dpokit.policies.diffusion.policy import apply_lora  # noqa: E402

R, ALPHA = 4, 8
# fp32: the same weights through peft's layers (dpokit) and diffusers' (the pipeline) differ
# by rounding at most (measured 0 here; without alpha: 0.58, 0.57, 0.20); the adapter moves
# the output by 0.3 to 0.9
TOLERANCE, MOVED = 1e-5, 0.05


def _inputs(kind: str):
    """(a tiny pipeline's builder, its diffusers class name, a fixed denoiser call)."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 4, 4)
    if kind == "sd":
        c = torch.randn(1, 12, 16)
        return (tiny_pipeline, "StableDiffusionPipeline",
                lambda m: m(x, torch.tensor([50]), encoder_hidden_states=c).sample)
    if kind == "sdxl":
        c = {"encoder_hidden_states": torch.randn(1, 12, 32),
             "added_cond_kwargs": {"text_embeds": torch.randn(1, 16),
                                   "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}}
        return (tiny_sdxl_pipeline, "StableDiffusionXLPipeline",
                lambda m: m(x, torch.tensor([50]), **c).sample)
    c = {"encoder_hidden_states": torch.randn(1, 20, 32), "pooled_projections": torch.randn(1, 32)}
    return (tiny_sd3_pipeline, "StableDiffusion3Pipeline",
            lambda m: m(hidden_states=x, timestep=torch.tensor([500.0]), **c).sample)


def _trained_policy(folder):
    """A pipeline's policy with LoRA r 4, alpha 8 whose B is away from 0 (as after training:
    at B = 0 the adapter does nothing and any scale passes)."""
    parts = load_pipeline(str(folder))
    policy = parts.policy(apply_lora(parts.unet, R, ALPHA, seed=0), "adapter")
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    return policy.unet.eval()


def _diffusers_output(folder, kind_name, call, final):
    import diffusers

    pipe = getattr(diffusers, kind_name).from_pretrained(folder)
    denoiser = pipe.transformer if kind_name == "StableDiffusion3Pipeline" else pipe.unet
    with torch.no_grad():
        base = call(denoiser)
        pipe.load_lora_weights(final)
        return base, call(denoiser)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3"])
def test_an_exported_adapter_acts_in_diffusers_at_its_own_scale(tmp_path, kind):
    build, kind_name, call = _inputs(kind)
    folder = build(tmp_path / kind)
    unet = _trained_policy(folder)
    with torch.no_grad():
        trained = call(unet)
    final = tmp_path / "final"
    policy_module.save_for_diffusers(unet, final, kind_name)
    base, loaded = _diffusers_output(folder, kind_name, call, final)
    assert (trained - base).abs().max() > MOVED  # the adapter acts
    gap = (loaded - trained).abs().max().item()  # before the fix: half the move
    assert gap < TOLERANCE, f"diffusers' output is {gap:.3g} from the trained policy's"
    # dpokit's own loader of final/ (the peft files): the same scale, not applied twice
    again = load_trained(str(final), str(folder), "adapter").unet
    with torch.no_grad():
        torch.testing.assert_close(call(again), trained, atol=TOLERANCE, rtol=0)


def test_without_metadata_support_the_scale_is_folded_into_lora_b(tmp_path, monkeypatch):
    """A diffusers without adapter metadata (before 0.34) reads every adapter at scale 1:
    alpha / r is then folded into the diffusers file's lora_B, and the peft files keep the
    adapter as trained."""
    build, kind_name, call = _inputs("sd")
    folder = build(tmp_path / "sd")
    unet = _trained_policy(folder)
    with torch.no_grad():
        trained = call(unet)
    monkeypatch.setattr(policy_module, "_takes_metadata", lambda pipeline, part: False)
    final = tmp_path / "final"
    policy_module.save_for_diffusers(unet, final, kind_name)
    from safetensors import safe_open

    with safe_open(str(final / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert "lora_adapter_metadata" not in (f.metadata() or {})
    _, loaded = _diffusers_output(folder, kind_name, call, final)
    torch.testing.assert_close(loaded, trained, atol=TOLERANCE, rtol=0)
    again = load_trained(str(final), str(folder), "adapter").unet
    with torch.no_grad():
        torch.testing.assert_close(call(again), trained, atol=TOLERANCE, rtol=0)
