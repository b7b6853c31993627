"""A pipeline's VAE and prompt encoders as diffusers uses them (issue 44), per family (SD 1.x,
SDXL, SD3): a known image encoded to latents ``(z - shift) * scale`` and decoded back
``decode(z / scale + shift)`` equals the VAE's own reconstruction, and the decode equals the
diffusers pipeline's own (its ``output_type="latent"`` latents against its image); the prompt
encoders equal the pipeline's ``encode_prompt`` (CLIP and T5 padded on the right, the
penultimate states, the pooled projections). Tiny pipelines built in-process; fp32."""

from __future__ import annotations

import pytest
import torch
from test_pipeline_cli import tiny_pipeline
from test_pipeline_more import tiny_sd3_pipeline, tiny_sdxl_pipeline

pytest.importorskip("diffusers")

from dpokit.policies.diffusion.pipeline import load_pipeline  # noqa: E402

FAMILIES = {"sd": (tiny_pipeline, "StableDiffusionPipeline"),
            "sdxl": (tiny_sdxl_pipeline, "StableDiffusionXLPipeline"),
            "sd3": (tiny_sd3_pipeline, "StableDiffusion3Pipeline")}
PROMPTS = ["a red circle", "a big blue square on the left of a small green triangle"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    build, name = FAMILIES[request.param]
    folder = build(tmp_path_factory.mktemp(request.param))
    import diffusers

    pipe = getattr(diffusers, name).from_pretrained(folder, torch_dtype=torch.float32)
    return request.param, load_pipeline(str(folder)), pipe


def known_image() -> torch.Tensor:
    """(2, 3, 16, 16) in [-1, 1]: a horizontal ramp in red, a vertical one in green, a
    checkerboard in blue; and its negative."""
    ramp = torch.linspace(-1, 1, 16)
    image = torch.stack([ramp.expand(16, 16), ramp[:, None].expand(16, 16),
                         (torch.arange(256).view(16, 16) % 2 * 2 - 1).float()])
    return torch.stack([image, -image])


def test_encode_then_decode_is_the_vaes_own_round_trip(family):
    kind, parts, _ = family
    policy = parts.policy(parts.unet, "none")
    vae, x = parts.vae, known_image()
    shift = vae.config.get("shift_factor") or 0.0
    scale = vae.config.scaling_factor
    assert (shift, scale) == ((0.1, 1.5) if kind == "sd3" else (0.0, 0.18215))
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        own = vae.decode(mean).sample
    latents = policy.to_latents(x)
    torch.testing.assert_close(latents, (mean - shift) * scale, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(policy.to_images(latents), own, rtol=1e-5, atol=1e-5)
    # a latent moved by one unit moves the decoder's input by 1/scale (not scale, not 1)
    moved = policy.to_images(latents + 1.0)
    with torch.no_grad():
        expected = vae.decode(mean + 1.0 / scale).sample
    torch.testing.assert_close(moved, expected, rtol=1e-5, atol=1e-5)


def test_the_decode_is_the_pipelines_own(family):
    """The pipeline's latents (``output_type="latent"``) decoded by dpokit equal the image the
    pipeline itself decodes from them (its [0, 1] ``pt`` output)."""
    kind, parts, pipe = family
    policy = parts.policy(parts.unet, "none")
    options = dict(num_inference_steps=2, guidance_scale=1.0, height=16, width=16)
    if kind == "sd3":
        options["max_sequence_length"] = 77
    latents = pipe(PROMPTS[0], output_type="latent", generator=torch.Generator().manual_seed(3),
                   **options).images
    image = pipe(PROMPTS[0], output_type="pt", generator=torch.Generator().manual_seed(3),
                 **options).images
    assert latents.shape == (1, 4, 4, 4) and image.shape == (1, 3, 16, 16)
    ours = (policy.to_images(latents) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, image, rtol=1e-5, atol=1e-5)


def test_the_prompt_encoders_are_the_pipelines_own(family):
    """Prompts of different lengths (padding matters): dpokit's conditioning equals
    ``encode_prompt``'s, state for state, and the padding is on the right (a prompt's states
    do not depend on how long the others are)."""
    kind, parts, pipe = family
    encoder, _ = parts.conditioning()
    with torch.no_grad():
        ours = encoder(PROMPTS)
        if kind == "sd":
            embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
            torch.testing.assert_close(ours, embeds, rtol=1e-5, atol=1e-5)
            alone = encoder(PROMPTS[:1])
            torch.testing.assert_close(ours[:1], alone, rtol=1e-5, atol=1e-5)
        elif kind == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu",
                                                      do_classifier_free_guidance=False)
            torch.testing.assert_close(ours.hidden, embeds, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.pooled, pooled, rtol=1e-5, atol=1e-5)
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, device="cpu",
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=77)
            torch.testing.assert_close(ours.hidden, embeds, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.pooled, pooled, rtol=1e-5, atol=1e-5)
    tokenizer = parts.tokenizers[-1]
    ids = tokenizer(PROMPTS[:1], padding="max_length", max_length=12).input_ids[0]
    assert ids[-1] == tokenizer.pad_token_id != ids[0]  # right padding, as the encoders read
