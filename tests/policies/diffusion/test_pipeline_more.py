"""More diffusers pipeline folders: SDXL (two text encoders, the pooled embedding and the
added time ids) through `dpokit train` and loaded back by diffusers; `dpokit sft` of an image
model (the plain diffusion loss on `prompt, image` rows); a full (non-LoRA) fine-tune
evaluated against its base UNet. Tiny pipelines built and saved in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tokenizer, write_jsonl
from test_pipeline_cli import pick_a_pic_rows, tiny_pipeline, tiny_vae
from vlm_helpers import shape_image

pytest.importorskip("diffusers")

from dpokit.cli import main  # noqa: E402
from dpokit.data.io import DataError, Record  # noqa: E402
from dpokit.policies.diffusion import build_image_examples  # noqa: E402
from dpokit.policies.diffusion.pipeline import load_pipeline  # noqa: E402

# fp32 on every host: the thresholds below are fp32's, and `dpokit eval` computes in fp32
COMMON = ["progress_bar=false", "log_with=[]", "batch_size=8", "eval_before=true",
          "mixed_precision=no"]


def tiny_sdxl_pipeline(folder):
    """An SDXL-shaped pipeline: two CLIP text encoders (16 + 16 wide, the second with a
    16-wide projection), a UNet reading their states (32 wide), the pooled embedding and six
    time ids; 16x16 images, 4x4x4 latents."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    torch.manual_seed(0)
    tokenizers = [make_tokenizer(), make_tokenizer()]
    for tok in tokenizers:
        tok.model_max_length = 12
    config = {"vocab_size": len(tokenizers[0]), "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16}
    first = CLIPTextModel(CLIPTextConfig(**config))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=16))
    vae = tiny_vae()
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 16)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=first, text_encoder_2=second,
                                     tokenizer=tokenizers[0], tokenizer_2=tokenizers[1],
                                     unet=unet,
                                     scheduler=EulerDiscreteScheduler(num_train_timesteps=100))
    pipe.save_pretrained(folder)
    return folder


def _pairs_file(tmp_path):
    rows = pick_a_pic_rows(tmp_path, 32)
    for r in rows:  # hex bytes -> files (JSON holds no raw bytes)
        for key in ("jpg_0", "jpg_1"):
            if not str(r[key]).endswith(".png"):
                name = f"w{abs(hash(r[key])) % 10**8}.png"
                (tmp_path / name).write_bytes(bytes.fromhex(r[key]))
                r[key] = name
    return write_jsonl(tmp_path / "pick.jsonl", rows)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def test_sdxl_conditioning_reads_both_encoders_pooled_and_time_ids(tmp_path):
    parts = load_pipeline(str(tiny_sdxl_pipeline(tmp_path / "xl")))
    assert parts.kind == "StableDiffusionXLPipeline" and len(parts.text_encoders) == 2
    encoder, call = parts.conditioning()
    c = encoder(["a red circle", "a blue circle"])
    assert c.hidden.shape == (2, 12, 32) and c.pooled.shape == (2, 16)
    assert c.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2  # an uncropped 16x16 image
    # the states are the penultimate layers of each encoder, side by side
    ids = parts.tokenizers[0](["a red circle"], padding="max_length", max_length=12,
                              truncation=True, return_tensors="pt").input_ids
    first = parts.text_encoders[0](ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(c.hidden[:1, :, :16], first)
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 60])
    out = call(parts.unet, x, t, c)
    other = c.__class__(c.hidden, c.pooled, c.time_ids * 2)  # the time ids are read
    assert out.shape == x.shape and not torch.allclose(out, call(parts.unet, x, t, other))


def _lora_dpo(folder, tmp_path, learning_rate: str):
    """Diffusion-DPO with LoRA through the CLI on the colour pairs: the loss starts at ln 2
    (LoRA B = 0) and the held-out loss at fixed noise falls; returns (final/, pairs, held)."""
    data = _pairs_file(tmp_path)
    out = tmp_path / "run"
    assert main(["train", f"model={folder}", f"train_data={data}", f"eval_data={data}",
                 "lora=true", "lora_r=4", "lora_alpha=4", "beta=500",
                 "precompute_ref_logps=false", "max_steps=40", f"learning_rate={learning_rate}",
                 f"output_dir={out}", *COMMON]) == 0
    rows = _metrics(out)
    assert [m["loss"] for m in rows if "loss" in m][0] == pytest.approx(math.log(2), abs=1e-5)
    held = [m["eval/loss"] for m in rows if "eval/loss" in m]
    assert held[-1] < held[0] - 0.01, held
    return out / "final", data, held


def test_diffusion_dpo_of_an_sdxl_folder_loads_back_into_diffusers(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder = tiny_sdxl_pipeline(tmp_path / "xl")
    final, data, held = _lora_dpo(folder, tmp_path, "5e-3")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([50])
    cond = {"encoder_hidden_states": torch.randn(1, 12, 32),
            "added_cond_kwargs": {"text_embeds": torch.randn(1, 16),
                                  "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}}
    with torch.no_grad():
        before = pipe.unet(x, t, **cond).sample
        pipe.load_lora_weights(final)
        after = pipe.unet(x, t, **cond).sample
    assert not torch.allclose(before, after, atol=1e-5)  # the adapter loaded and acts
    figures = tmp_path / "eval.json"
    assert main(["eval", str(final), "--pairs", str(data), "--beta", "500",
                 "--json", str(figures)]) == 0
    assert json.loads(figures.read_text())["eval/loss"] == pytest.approx(held[-1], abs=1e-4)


def _image_rows(tmp_path, n: int = 8) -> str:
    rows = []
    for i in range(n):
        colour = ("red", "blue")[i % 2]
        shape_image(colour, "circle", (16, 16)).save(tmp_path / f"i{i}.png")
        rows.append({"prompt": f"a {colour} circle", "image": f"i{i}.png"})
    return write_jsonl(tmp_path / "images.jsonl", rows)


def test_image_rows_name_file_row_and_field(tmp_path):
    shape_image("red", "circle", (16, 16)).save(tmp_path / "a.png")
    good = Record(str(tmp_path / "s.jsonl"), 1, {"caption": "a red circle",
                                                 "image": str(tmp_path / "a.png")})
    built = build_image_examples([good], 16)
    assert built.items[0].prompt == "a red circle" and built.items[0].image.shape == (3, 16, 16)
    with pytest.raises(DataError, match="s.jsonl, row 2, field 'image'"):
        build_image_examples([Record("s.jsonl", 2, {"prompt": "x", "image": ""})], 16)


@pytest.mark.parametrize("lora", [True, False])
def test_sft_of_an_image_model_lowers_the_denoising_error(tmp_path, lora):
    """`dpokit sft model=<pipeline>`: the held-out denoising error (fixed noise per image)
    falls; LoRA's final/ loads into diffusers, a full fine-tune's final/unet is a UNet."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    folder = tiny_pipeline(tmp_path / "sd")
    data = _image_rows(tmp_path)
    out = tmp_path / "sft"
    extra = (["lora=true", "lora_r=4", "lora_alpha=4", "max_steps=30", "learning_rate=3e-2"]
             if lora else ["lora=false", "max_steps=20", "learning_rate=5e-3"])
    assert main(["sft", f"model={folder}", f"train_data={data}", f"eval_data={data}",
                 f"output_dir={out}", *extra, *COMMON]) == 0
    held = [m["eval/loss"] for m in _metrics(out) if "eval/loss" in m]
    assert held[-1] < 0.95 * held[0], held
    final = out / "final"
    card = json.loads((final / "dpokit.json").read_text())
    assert card["modality"] == "diffusion" and card["kind"] == ("adapter" if lora else "full")
    if lora:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        pipe.load_lora_weights(final)
    else:
        UNet2DConditionModel.from_pretrained(final, subfolder="unet")


def test_a_full_fine_tune_is_evaluated_against_its_base_unet(tmp_path):
    """DPO without LoRA (the reference a frozen copy): `dpokit eval final/` compares the
    trained UNet with the pipeline's own, so the held-out figures equal the run's last
    evaluation. (A full fine-tune of this tiny UNet fits each step's noise draw and its
    held-out loss at other draws rises: what is tested is the comparison with the base.)"""
    folder = tiny_pipeline(tmp_path / "sd")
    data = _pairs_file(tmp_path)
    out = tmp_path / "full"
    assert main(["train", f"model={folder}", f"train_data={data}", f"eval_data={data}",
                 "lora=false", "beta=500", "precompute_ref_logps=false", "max_steps=10",
                 "learning_rate=1e-4", f"output_dir={out}", *COMMON]) == 0
    held = [m["eval/loss"] for m in _metrics(out) if "eval/loss" in m]
    assert held[0] == pytest.approx(math.log(2), abs=1e-5)  # the copy is the base
    assert abs(held[-1] - held[0]) > 1e-3  # trained: no longer the base
    assert (out / "final" / "unet").is_dir()
    figures = tmp_path / "eval.json"
    assert main(["eval", str(out / "final"), "--pairs", str(data), "--beta", "500",
                 "--json", str(figures)]) == 0
    assert json.loads(figures.read_text())["eval/loss"] == pytest.approx(held[-1], abs=1e-4)


def tiny_sd3_pipeline(folder, t5: bool = True):
    """An SD3-shaped pipeline: a one-layer joint transformer over 4x4x4 latents (patch 1),
    two CLIP encoders with projections (16 wide each), a tiny T5 (32 wide: the joint width),
    a flow-matching schedule (shift 3) and a VAE with a shift factor."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizers = [make_tokenizer() for _ in range(3)]
    for tok in tokenizers:
        tok.model_max_length = 12
    config = {"vocab_size": len(tokenizers[0]), "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
              "projection_dim": 16}
    clips = [CLIPTextModelWithProjection(CLIPTextConfig(**config)) for _ in range(2)]
    t5_model = T5EncoderModel(T5Config(vocab_size=len(tokenizers[2]), d_model=32, d_kv=8,
                                       d_ff=32, num_layers=1, num_heads=2)) if t5 else None
    vae = tiny_vae(shift_factor=0.1, scaling_factor=1.5)
    transformer = SD3Transformer2DModel(
        sample_size=4, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=100, shift=3.0),
        text_encoder=clips[0], tokenizer=tokenizers[0], text_encoder_2=clips[1],
        tokenizer_2=tokenizers[1], text_encoder_3=t5_model,
        tokenizer_3=tokenizers[2] if t5 else None)
    pipe.save_pretrained(folder)
    return folder


def test_sd3_folders_are_noised_by_flow_matching_and_conditioned_on_three_encoders(tmp_path):
    from dpokit.data.io import load_records
    from dpokit.policies.diffusion import DiffusionPairCollator, build_image_pairs

    for t5 in (True, False):
        parts = load_pipeline(str(tiny_sd3_pipeline(tmp_path / f"sd3{t5}", t5)))
        assert parts.kind == "StableDiffusion3Pipeline"
        assert len(parts.text_encoders) == (3 if t5 else 2)
        encoder, _ = parts.conditioning()
        c = encoder(["a red circle"])
        assert c.hidden.shape == (1, 12 + 77, 32) and c.pooled.shape == (1, 32)
        assert (c.hidden[0, 12:].abs().sum() > 0) == t5  # T5's states, or zeros without it
    policy = parts.policy(parts.unet, "none")
    data = _pairs_file(tmp_path)
    pairs = build_image_pairs(list(load_records(str(data))), policy.resolution).items[:2]
    batch = DiffusionPairCollator(100, noise_shape=parts.latent_shape)(pairs)
    noisy, target, timesteps = policy._targets(batch)
    x0 = (parts.vae.encode(batch.images).latent_dist.mean - 0.1) * 1.5  # shift, then scale
    sigma = parts.scheduler.sigmas[batch.timesteps.repeat(2)].view(-1, 1, 1, 1)
    noise = batch.noise.repeat(2, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(timesteps, parts.scheduler.timesteps[batch.timesteps.repeat(2)])
    images = policy.generate(["a red circle"], steps=3, seed=0)  # flow Euler steps
    assert images.shape == (1, 3, 16, 16) and images.abs().max() <= 1


def test_diffusion_dpo_of_an_sd3_folder_loads_back_into_diffusers(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    folder = tiny_sd3_pipeline(tmp_path / "sd3")
    final, _, _ = _lora_dpo(folder, tmp_path, "2e-2")
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    cond = {"encoder_hidden_states": torch.randn(1, 20, 32), "pooled_projections":
            torch.randn(1, 32)}
    with torch.no_grad():
        before = pipe.transformer(hidden_states=x, timestep=t, **cond).sample
        pipe.load_lora_weights(final)
        after = pipe.transformer(hidden_states=x, timestep=t, **cond).sample
    assert not torch.allclose(before, after, atol=1e-5)  # the adapter loaded and acts
