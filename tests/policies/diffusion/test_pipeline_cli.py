"""`dpokit train model=<diffusers pipeline folder>`: a tiny Stable Diffusion pipeline (UNet,
VAE, CLIP text encoder) built and saved in-process, Pick-a-Pic rows (ties dropped and
counted), Diffusion-DPO with LoRA through the CLI, and final/ loaded by diffusers."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import make_tokenizer, write_jsonl
from vlm_helpers import shape_image

pytest.importorskip("diffusers")

from dpokit.cli import main  # noqa: E402
from dpokit.data.io import DataError, Record  # noqa: E402
from dpokit.policies.diffusion import build_image_pairs  # noqa: E402


def tiny_vae(**options):
    """A 3-level VAE: 16x16 images, 4x4x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         block_out_channels=(8, 8, 8), norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, sample_size=16, **options)


def tiny_pipeline(folder):
    """A Stable Diffusion 1.x-shaped pipeline: 16x16 images, 4x4x4 latents."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = make_tokenizer()
    tok.model_max_length = 12
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16,
                                        intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16))
    vae = tiny_vae()
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=DDPMScheduler(num_train_timesteps=100),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    shape_image(colour, "circle", (16, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


def pick_a_pic_rows(tmp_path, n: int = 8) -> list[dict]:
    """'a red circle' etc.: the image of the named colour preferred, as jpg_0 or jpg_1 (paths
    and bytes), plus one tie."""
    colours, rows = ["red", "blue", "green"], []
    for i in range(n):
        right, wrong = colours[i % 3], colours[(i + 1) % 3]
        shape_image(right, "circle", (16, 16)).save(tmp_path / f"r{i}.png")
        first = i % 2 == 0
        rows.append({"caption": f"a {right} circle",
                     "jpg_0": f"r{i}.png" if first else _png(wrong).hex(),
                     "jpg_1": _png(wrong).hex() if first else f"r{i}.png",
                     "label_0": 1 if first else 0})
    rows.append({"caption": "a red circle", "jpg_0": "r0.png", "jpg_1": "r0.png",
                 "label_0": 0.5})
    return rows


def test_pick_a_pic_rows_choose_by_label_and_drop_ties(tmp_path):
    records = [Record(str(tmp_path / "p.jsonl"), i + 1, r)
               for i, r in enumerate(pick_a_pic_rows(tmp_path, 3))]
    for r in records:  # (the test stores bytes as hex text in JSON; here: real bytes)
        for key in ("jpg_0", "jpg_1"):
            if not str(r.values[key]).endswith(".png"):
                r.values[key] = bytes.fromhex(r.values[key])
            else:
                r.values[key] = str(tmp_path / r.values[key])
    built = build_image_pairs(records, 16)
    assert built.report.kept == 3 and built.report.skipped["tie (label_0 = 0.5)"] == 1
    red = built.items[0]
    assert red.prompt == "a red circle" and red.chosen[0].mean() > red.rejected[0].mean()
    second = built.items[1]  # label_0 = 0: jpg_1 (the blue file) is the chosen image
    assert second.chosen[2].mean() > second.rejected[2].mean()
    bad = Record("p.jsonl", 7, {"caption": "x", "jpg_0": str(tmp_path / "r0.png"),
                                "label_0": 1})
    with pytest.raises(DataError, match="p.jsonl, row 7, field 'jpg_1'"):
        build_image_pairs([bad], 16)
    odd = Record("p.jsonl", 8, {"caption": "x", "jpg_0": "a", "jpg_1": "b", "label_0": 2})
    with pytest.raises(DataError, match="row 8, field 'label_0': 2: not 1"):
        build_image_pairs([odd], 16)


def test_diffusion_dpo_of_a_pipeline_folder_through_the_cli(tmp_path, capsys):
    """The loss starts at ln 2 (LoRA B = 0) and falls; final/ holds diffusers-format LoRA
    weights that the pipeline loads and that compute what the trained policy computes."""
    from diffusers import StableDiffusionPipeline

    folder = tiny_pipeline(tmp_path / "sd")
    rows = pick_a_pic_rows(tmp_path, 8)
    for r in rows:  # bytes columns: as base64-free raw bytes are not JSON, keep paths only
        for key in ("jpg_0", "jpg_1"):
            if not str(r[key]).endswith(".png"):
                name = f"w{abs(hash(r[key])) % 10**8}.png"
                (tmp_path / name).write_bytes(bytes.fromhex(r[key]))
                r[key] = name
    data = write_jsonl(tmp_path / "pick.jsonl", rows)
    out = tmp_path / "run"
    assert main(["train", f"model={folder}", f"train_data={data}", f"eval_data={data}",
                 "lora=true", "lora_r=4", "lora_alpha=4", "beta=500",
                 "precompute_ref_logps=false", "batch_size=8", "max_steps=25",
                 "learning_rate=5e-3", "eval_before=true", "progress_bar=false", "log_with=[]",
                 "mixed_precision=no", f"output_dir={out}"]) == 0  # (fp32's thresholds)
    printed = capsys.readouterr().out
    assert "8 pairs kept; 1 skipped" in printed and "tie (label_0 = 0.5)" in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    losses = [m["loss"] for m in rows if "loss" in m]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0: policy == reference
    # the pairs' loss at the evaluation batches' fixed noise falls (a training step's loss is
    # noisy: each draws new noise and timesteps)
    held = [m["eval/loss"] for m in rows if "eval/loss" in m]
    assert held[0] == pytest.approx(math.log(2), abs=1e-5) and held[-1] < held[0] - 0.01, held
    final = out / "final"
    assert (final / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((final / "dpokit.json").read_text())["modality"] == "diffusion"
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    plain = pipe.unet
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([50])
    c = torch.randn(1, 12, 16)
    with torch.no_grad():
        before = plain(x, t, encoder_hidden_states=c).sample
        pipe.load_lora_weights(final)
        after = pipe.unet(x, t, encoder_hidden_states=c).sample
    assert not torch.allclose(before, after, atol=1e-5)  # the adapter loaded and acts

    # dpokit eval of the trained adapter: held-out pairs and samples (the reference: LoRA off)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a red circle"},
                                                      {"prompt": "a blue circle"}])
    figures_file, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    assert main(["eval", str(final), "--pairs", str(data), "--beta", "500", "--prompts",
                 str(prompts), "--reward", "helpers:image_redness", "--num-samples", "2",
                 "--sample-steps", "3", "--grid", str(grid), "--json", str(figures_file)]) == 0
    figures = json.loads(figures_file.read_text())
    assert figures["eval/loss"] == pytest.approx(held[-1], abs=1e-4)  # the run's last eval
    assert 0 <= figures["eval/rewards/accuracies"] <= 1 and figures["eval/img/diversity"] > 0
    assert {"eval/img/reward", "eval/img/reference_reward"} <= set(figures)
    from PIL import Image

    assert Image.open(grid).size == (2 * 16, 2 * 16)  # 2 prompts x 2 samples of 16 x 16
    assert main(["eval", str(folder), "--pairs", str(data)]) == 2  # no reference to compare
    assert "compare with a reference" in capsys.readouterr().err


def test_other_pipelines_and_modes_are_refused_in_one_line(tmp_path, capsys):
    folder = tiny_pipeline(tmp_path / "sd")
    index = json.loads((folder / "model_index.json").read_text())
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x.png",
                                              "rejected": "y.png"}])
    assert main(["train", f"model={folder}", f"train_data={data}", "online.mode=online",
                 "max_steps=2", "precompute_ref_logps=false"]) == 2
    assert "a diffusers pipeline" in capsys.readouterr().err
    index["_class_name"] = "FluxPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    assert main(["train", f"model={folder}", f"train_data={data}",
                 "precompute_ref_logps=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FluxPipeline; dpokit trains" in err[0]
