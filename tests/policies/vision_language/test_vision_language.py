"""Vision-language DPO on tiny in-process models of two families (LLaVA, Idefics3/SmolVLM):
image rows, image-token accounting, the prefix-shared layout (images encoded once per pair)
against its plain twin, trainable parts, a falling loss, SFT then DPO through the CLI."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
from conftest import write_jsonl
from vlm_helpers import (
    FAMILIES,
    GEMMA3_IMAGE_TOKENS,
    IDEFICS3_TILE_TOKENS,
    LLAVA_IMAGE_TOKENS,
    colour_rows,
    shape_image,
)

from dpokit.data.images import row_images
from dpokit.data.io import DataError, Record
from dpokit.data.text.pairs import TokenizeSettings
from dpokit.policies.vision_language import (
    VisionLanguagePolicy,
    VisionPairCollator,
    VisionSequenceCollator,
    VisionTokenizer,
    build_vision_pairs,
    build_vision_sequences,
    image_axis,
    image_token_count,
    lora_targets,
    model_parts,
)
from dpokit.policies.vision_language.models import (
    bidirectional_images,
    family_batching,
    image_token_id,
    mrope_merge,
)

pytest.importorskip("PIL")


def _records(rows, source="pairs.jsonl"):
    return [Record(source, i + 1, r) for i, r in enumerate(rows)]


def _tokenizer(model, processor, **settings):
    return VisionTokenizer(processor, image_token_id(model.config), image_axis(model.config),
                           TokenizeSettings(**{"max_length": 512, "max_prompt_length": 256,
                                               **settings}),
                           mrope_merge(model.config, processor))


def _traits(model, tok) -> dict:
    """The collators' family options (3-D positions, images seen whole), as the run's."""
    return dataclasses.asdict(family_batching(model.config, tok.image_token_id,
                                              tok.mrope_merge))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model, processor = FAMILIES[request.param]()
    return request.param, model, processor


# --- images --------------------------------------------------------------------------------
def test_images_from_paths_bytes_records_and_pil(tmp_path):
    image = shape_image("red")
    image.save(tmp_path / "a.png")
    raw = io.BytesIO()
    image.save(raw, format="PNG")
    record = Record(str(tmp_path / "rows.jsonl"), 3, {"images": [
        "a.png", str(tmp_path / "a.png"), raw.getvalue(), {"bytes": raw.getvalue(), "path": None},
        {"path": "a.png"}, image.convert("L")]})
    loaded = row_images(record)
    assert len(loaded) == 6 and all(im.mode == "RGB" and im.size == (40, 40) for im in loaded)
    assert loaded[0].getpixel((20, 20)) == (220, 30, 30)
    assert row_images(Record("x", 1, {"prompt": "p"})) == []


@pytest.mark.parametrize("value, message", [
    (["missing.png"], "images[0]: no image file"),
    ([b"not an image"], "images[0]: not a readable image"),
    ([{"neither": 1}], "images[0]: an image record needs"),
    (7, "images: an image is a path"),
])
def test_bad_images_name_file_row_and_field(tmp_path, value, message):
    with pytest.raises(DataError) as err:
        row_images(Record(str(tmp_path / "rows.jsonl"), 4, {"images": value}))
    assert f"rows.jsonl, row 4, field '{message.split(':')[0]}'" in str(err.value)
    assert message.split(": ", 1)[1] in str(err.value)


# --- rows -> tokens: image-token accounting ------------------------------------------------
def _tokens_per_image(name: str, pair) -> int:
    if name == "llava":
        return LLAVA_IMAGE_TOKENS
    if name == "qwen2_vl":  # t·h·w patches, 2x2 merged into one token
        return int(pair.vision.tensors["image_grid_thw"].prod(-1).sum()) // 4
    if name == "gemma3":
        return GEMMA3_IMAGE_TOKENS
    return IDEFICS3_TILE_TOKENS * pair.vision.tensors["pixel_values"].shape[1]


def test_prompt_tokens_hold_every_image_token(family):
    name, model, processor = family
    tok = _tokenizer(model, processor)
    rows = colour_rows(3)
    rows[1]["images"] = [shape_image("red"), shape_image("blue", size=(64, 32))]  # two images
    rows[1]["prompt"] = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
        {"type": "text", "text": "which colours?"}]}]
    rows.append({"prompt": "Say hi.", "chosen": "hi", "rejected": "no"})  # text only
    pairs = build_vision_pairs(_records(rows), tok)
    image_id = image_token_id(model.config)
    for pair in pairs.items[:3]:
        count = sum(t == image_id for t in pair.prompt_ids)
        assert count == pair.vision.num_image_tokens > 0
        assert image_id not in pair.chosen_ids + pair.rejected_ids
    assert pairs[1].vision.num_images == 2
    if name == "llava":
        assert pairs[0].vision.num_image_tokens == LLAVA_IMAGE_TOKENS
        assert pairs[1].vision.num_image_tokens == 2 * LLAVA_IMAGE_TOKENS
    else:  # every tile (and the global image) of every image gets its tokens
        assert pairs[0].vision.num_image_tokens == _tokens_per_image(name, pairs[0])
    assert pairs[3].vision is None
    assert "images in 3 prompts" in pairs.report.summary()
    # the pixels are part of the fingerprint: another image, another dataset
    rows[0]["images"] = [shape_image("green")]
    assert build_vision_pairs(_records(rows), tok).fingerprint() != pairs.fingerprint()


def test_image_tokens_are_never_cut_the_row_is_reported(family):
    _, model, processor = family
    rows = colour_rows(4)
    rows[2]["images"] = [shape_image("red")] * 3  # three images: a prompt over the limit
    rows[2]["prompt"] = "Three shapes: what colour?"
    one = max(len(p.prompt_ids) for p in build_vision_pairs(
        _records(colour_rows(4)), _tokenizer(model, processor)).items)
    limit = one + 8  # room for every one-image prompt, not for three images
    with pytest.raises(DataError, match=r"pairs.jsonl, row 3, field 'prompt': prompt too long: "
                                        r"\d+ tokens \(\d+ of them image tokens, which are "
                                        rf"never cut\) > max_prompt_length={limit}"):
        build_vision_pairs(_records(rows), _tokenizer(model, processor, max_prompt_length=limit))
    kept = build_vision_pairs(_records(rows), _tokenizer(model, processor,
                                                         max_prompt_length=limit), "skip")
    assert kept.report.kept == 3 and kept.report.skipped["prompt too long"] == 1
    # completions are cut to fit max_length (counted); the prompt stays whole
    longest = max(len(p.prompt_ids) for p in kept.items)
    two = [{**r, "chosen": f"{c} it is, surely", "rejected": f"{w} it is, surely"}
           for r, c, w in zip(colour_rows(2), ("red", "blue"), ("blue", "green"), strict=True)]
    short = build_vision_pairs(_records(two), _tokenizer(
        model, processor, max_prompt_length=limit, max_length=longest + 2))
    assert short.report.truncated_completions == 4
    assert all(len(p.prompt_ids) + len(c) <= longest + 2 for p in short.items
               for c in (p.chosen_ids, p.rejected_ids))


def test_placeholders_must_match_images(family):
    _, model, processor = family
    rows = colour_rows(1)
    rows[0]["prompt"] = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                       {"type": "text", "text": "what?"}]}]
    with pytest.raises(DataError, match="row 1, field 'images': 1 image.* but 2 image placeholder"):
        build_vision_pairs(_records(rows), _tokenizer(model, processor))
    rows[0]["imags"] = rows[0].pop("images")
    with pytest.raises(DataError, match="unknown column 'imags'; did you mean 'images'"):
        build_vision_pairs(_records(rows), _tokenizer(model, processor))


# --- layouts: images once per pair, the same numbers as the plain twin ---------------------
def _policy(model, processor, reference="none"):
    model.config.use_cache = False
    return VisionLanguagePolicy(model, processor, reference=reference)


def test_prefix_sharing_encodes_each_image_once_and_matches_the_plain_twin(family):
    name, model, processor = family
    tok = _tokenizer(model, processor)
    rows = colour_rows(5)
    rows.insert(2, {"prompt": "Say hi.", "chosen": "hi there", "rejected": "no"})
    pairs = build_vision_pairs(_records(rows), tok).items
    image_id = image_token_id(model.config)
    policy = _policy(model, processor)
    results = {}
    for layout in ("padded", "packed", "prefix_shared"):
        batch = VisionPairCollator(tok.tokenizer.pad_token_id, tok.image_axis, layout,
                                   max_row_tokens=400, **_traits(model, tok))(pairs)
        expected = sum(p.vision.num_image_tokens for p in pairs if p.vision)
        assert image_token_count(batch, image_id) == expected * (1 if layout ==
                                                                "prefix_shared" else 2)
        images = batch.model_inputs["pixel_values"]
        count = images.shape[0] if tok.image_axis == "first" else images.shape[1]
        per_pair = sum(p.vision.tensors["pixel_values"].shape[0 if tok.image_axis == "first"
                                                               else 1]
                       for p in pairs if p.vision)
        assert count == per_pair * (1 if layout == "prefix_shared" else 2)
        model.zero_grad()
        scores = policy.logps(batch)
        scores.logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[layout] = (scores.logps.detach(), grads)
    plain_logps, plain_grads = results["padded"]
    for layout in ("packed", "prefix_shared"):
        logps, grads = results[layout]
        torch.testing.assert_close(logps, plain_logps, atol=2e-5, rtol=1e-4)
        assert set(grads) == set(plain_grads)
        for n, g in grads.items():  # the vision tower's gradients too: images in the right rows
            scale = max(1.0, float(plain_grads[n].abs().max()))  # fp32 rounding grows with it
            torch.testing.assert_close(g, plain_grads[n], atol=2e-5 * scale, rtol=2e-4, msg=n)
    if bidirectional_images(model.config):  # each image's block is open, nothing more
        _check_image_blocks(VisionPairCollator(tok.tokenizer.pad_token_id, tok.image_axis,
                                               "prefix_shared", **_traits(model, tok))(pairs),
                            image_id)
    # a wrong image order would change the numbers: the test can fail
    swapped = VisionPairCollator(tok.tokenizer.pad_token_id, tok.image_axis, "prefix_shared",
                                 **_traits(model, tok))(pairs)
    key = "pixel_values"
    axis = 0 if tok.image_axis == "first" else 1
    swapped.model_inputs[key] = swapped.model_inputs[key].flip(axis)
    if "pixel_attention_mask" in swapped.model_inputs:
        swapped.model_inputs["pixel_attention_mask"] = \
            swapped.model_inputs["pixel_attention_mask"].flip(axis)
    with torch.no_grad():
        assert not torch.allclose(policy.logps(swapped).logps, plain_logps, atol=1e-4)


def _check_image_blocks(batch, image_id: int) -> None:
    """In a segment layout's mask an image token sees every token of its image (also later
    ones) and, beyond its image, exactly what the causal segment mask lets it see."""
    is_image = batch.input_ids == image_id  # (R, T)
    mask = batch.attention_mask[:, 0]  # (R, T, T) query x key
    width = mask.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    runs = 0
    for row in range(mask.shape[0]):
        flags = is_image[row].tolist() + [False]
        start = None
        for t, flag in enumerate(flags):
            if flag and start is None:
                start = t
            elif not flag and start is not None:
                block = mask[row, start:t, start:t]
                assert block.all()  # the whole image, both ways
                outside = mask[row].clone()
                outside[start:t, start:t] = causal[start:t, start:t]
                assert not (outside & ~causal).any()  # nothing else sees ahead
                runs, start = runs + 1, None
    assert runs > 0


def test_sft_sequences_pack_with_their_images(family):
    _, model, processor = family
    tok = _tokenizer(model, processor)
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "images": r["images"]}
            for r in colour_rows(4)]
    rows.append({"messages": [{"role": "user", "content": "Say hi."},
                              {"role": "assistant", "content": "hi"}]})
    seqs = build_vision_sequences(_records(rows, "sft.jsonl"), tok).items
    policy = _policy(model, processor)
    with torch.no_grad():
        traits = _traits(model, tok)
        packed = policy.logps(VisionSequenceCollator(tok.tokenizer.pad_token_id, tok.image_axis,
                                                     "packed", 400, **traits)(seqs)).logps
        padded = policy.logps(VisionSequenceCollator(tok.tokenizer.pad_token_id, tok.image_axis,
                                                     "padded", **traits)(seqs)).logps
    torch.testing.assert_close(packed, padded, atol=2e-5, rtol=1e-4)


# --- trainable parts -----------------------------------------------------------------------
def test_parts_and_lora_on_the_language_part_only(family):
    name, model, _ = family
    parts = model_parts(model)
    vision = {"llava": "model.vision_tower", "idefics3": "model.vision_model",
              "qwen2_vl": "model.visual",  # (Qwen2-VL's merger is inside its ViT)
              "gemma3": "model.vision_tower"}[name]
    assert parts.vision == (vision,)
    assert parts.projector == {"llava": ("model.multi_modal_projector",),
                               "idefics3": ("model.connector",), "qwen2_vl": (),
                               "gemma3": ("model.multi_modal_projector",)}[name]
    assert "lm_head" in parts.language
    language = lora_targets(model, ["q_proj", "v_proj"], with_vision=False)
    assert language and all(".vision" not in n and n.rsplit(".", 1)[1] in ("q_proj", "v_proj")
                            for n in language)
    both = lora_targets(model, None, with_vision=True)
    assert any(n.startswith(parts.vision[0]) for n in both)
    assert not any("lm_head" in n for n in both)


# --- training: a falling loss; SFT then DPO through the CLI --------------------------------
@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model_dir(request, tmp_path_factory):
    model, processor = FAMILIES[request.param]()
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return request.param, path


def _common(tmp_path):
    return ["progress_bar=false", "log_with=[]", "batch_size=6", "max_length=400",
            "max_prompt_length=300", f"ref_cache_dir={tmp_path / 'cache'}",
            "eval_fraction=0", "eval_before=false"]


@pytest.mark.any_precision  # (it learns the colours: in any)
def test_sft_then_dpo_through_the_cli(model_dir, tmp_path, capsys):
    from dpokit.cli import main

    name, path = model_dir
    rows = colour_rows(6, tmp_path)
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"],
                                                "images": r["images"]} for r in rows])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    projector = {"llava": "multi_modal_projector", "idefics3": "connector",
                 "qwen2_vl": "merger", "gemma3": "multi_modal_projector"}[name]
    assert main(["sft", f"model={path}", f"train_data={sft}", "max_steps=4", "lora=true",
                 "lora_r=4", "learning_rate=1e-2", f"modules_to_save=[{projector}]",
                 f"output_dir={tmp_path / 'sft'}", *_common(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 sequences kept" in out and "6 images in 6 prompts" in out
    adapter = tmp_path / "sft" / "final"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [projector]
    assert (adapter / "processor_config.json").is_file() or \
        (adapter / "preprocessor_config.json").is_file()
    assert main(["train", f"model={adapter}", f"train_data={pairs}", "max_steps=20", "lora=true",
                 "learning_rate=1e-2", f"output_dir={tmp_path / 'dpo'}",
                 *_common(tmp_path)]) == 0
    assert "reference log-probs: computing" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").open()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 20
    assert losses[-1] < losses[0] - 0.02, losses
    # the prompts' text is the same and the colours' preferences form a cycle (red > blue >
    # green > red): only a model that reads the image can order the pairs
    assert [m for m in metrics if "loss" in m][-1]["rewards/accuracies"] >= 5 / 6


def test_frozen_vision_tower_and_full_fine_tuning(model_dir, tmp_path):
    from dpokit.config import load_config
    from dpokit.runs.vision_language import build_vision_run

    name, path = model_dir
    pairs = write_jsonl(tmp_path / "pairs.jsonl", colour_rows(6, tmp_path))
    cfg = load_config(None, [f"model={path}", f"train_data={pairs}", "max_steps=2",
                             "lora=false", "learning_rate=1e-3",
                             f"output_dir={tmp_path / 'full'}", *_common(tmp_path)])
    run = build_vision_run(cfg, log=lambda _: None)
    parts = model_parts(run.policy.model)
    before = {n: p.detach().clone() for n, p in run.policy.model.named_parameters()}
    run.trainer.train()
    after = dict(run.policy.model.named_parameters())
    vision = [n for n in before if n.startswith(parts.vision[0])]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("lm_head"))
    assert run.policy.reference_mode == "copy"


# --- generation: batched (left-padded) == one at a time -------------------------------------
def test_batched_answers_equal_one_at_a_time(family):
    _, model, processor = family
    policy = _policy(model, processor)
    model.config.use_cache = True
    rows = colour_rows(4)
    prompts = [r["prompt"] if i % 2 else f"Look closely. {r['prompt']} Answer briefly."
               for i, r in enumerate(rows)]
    images = [r["images"] for r in rows]
    batched = policy.answer(prompts, images, max_new_tokens=6, batch_size=4)
    single = policy.answer(prompts, images, max_new_tokens=6, batch_size=1)
    model.config.use_cache = False
    assert batched == single and len(batched) == 4


# --- config and recipes ----------------------------------------------------------------------
def test_shipped_recipes_and_config_checks():
    from dpokit.config import ConfigError, load_config
    from dpokit.runs.vision_language import _refuse_text_only

    sft = load_config("src/dpokit/recipes/vlm_sft.yaml", [])
    assert sft.model.modules_to_save == ["multi_modal_projector"]
    assert sft.model.vision_tower == "frozen"
    dpo = load_config("src/dpokit/recipes/vlm_dpo.yaml", [])
    assert dpo.data.batch_layout == "prefix_shared" and dpo.model.lora
    assert dpo.loss.name == ["sigmoid", "sft"]
    qwen = load_config("src/dpokit/recipes/qwen2_vl_dpo.yaml", ["train_data=p.jsonl"])
    assert qwen.model.name == "Qwen/Qwen2-VL-2B-Instruct" and qwen.model.lora
    assert qwen.data.batch_layout == "prefix_shared"
    gemma = load_config("src/dpokit/recipes/gemma3_vl_dpo.yaml", ["train_data=p.jsonl"])
    assert gemma.model.name == "google/gemma-3-4b-it" and gemma.data.max_length == 1024
    with pytest.raises(ConfigError, match="modules_to_save are LoRA options"):
        load_config(None, ["lora=false", "modules_to_save=[multi_modal_projector]"])
    with pytest.raises(ConfigError, match="vision_tower"):
        load_config(None, ["vision_tower=thawed"])
    with pytest.raises(ValueError, match="data.streaming, run.eval_prompts: not supported for "
                                         "image-text models"):
        _refuse_text_only(load_config(None, ["streaming=true", "eval_prompts=x.jsonl"]))


# --- the synthetic scenes of the demonstration -----------------------------------------------
def test_scenes_questions_and_the_hallucination_checker():
    import random

    from dpokit.apps.worlds.vision_shapes import (
        COLOURS,
        Item,
        Scene,
        ask,
        correct,
        hallucinated,
        with_absent_attribute,
    )

    scene = Scene((Item("red", "circle", 0), Item("blue", "square", 3)))
    image = scene.render(48)
    assert image.getpixel((12, 12)) == COLOURS["red"]  # centre of the top-left cell
    assert image.getpixel((36, 36)) == COLOURS["blue"]
    assert image.getpixel((36, 12)) == (255, 255, 255)  # an empty cell
    rng = random.Random(0)
    assert ask(scene, "count", rng).answer == "There are two shapes."
    assert ask(scene, "describe", rng).answer == \
        "A red circle in the top left and a blue square in the bottom right."
    colour = ask(scene, "colour", rng)
    assert colour.answer in ("The circle is red.", "The square is blue.")
    position = [ask(scene, "position", random.Random(s)) for s in range(8)]
    assert {(q.text, q.answer) for q in position} >= {("What is in the top left?",
                                                       "A red circle.")}
    assert ("What is in the top right?", "Nothing.") in {(q.text, q.answer) for q in position}
    assert hallucinated(scene, "Two red circles and blue squares.") == []
    assert hallucinated(scene, "A green circle and a blue triangle.") == ["green", "triangle"]
    assert hallucinated(scene, "Nothing.") == []
    assert correct(ask(scene, "count", rng), "there are two shapes")
    assert not correct(ask(scene, "count", rng), "There are three shapes.")
    for seed in range(10):
        bad = with_absent_attribute(scene, "A red circle.", random.Random(seed))
        assert bad != "A red circle." and len(hallucinated(scene, bad)) == 1
    assert with_absent_attribute(scene, "Nothing.", rng) is None
    same = Scene((Item("red", "circle", 0), Item("blue", "circle", 1)))
    assert ask(same, "colour", random.Random(1)).text.startswith("What colour is the circle in")


# --- Qwen2-VL's 3-D positions ----------------------------------------------------------------
@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen2_vl_positions_are_the_models_own_and_continue_in_every_layout(version):
    """mrope_positions equals the model's get_rope_index on prompts with no, one and two
    images of other sizes; a completion continues its prompt's positions (padded row =
    prefix-shared segment, the rejected one too); and 1-D positions would change the scores
    past the layout test's tolerance, so that test can fail."""
    from vlm_helpers import tiny_qwen2_vl

    from dpokit.policies.vision_language.models import mrope_positions

    model, processor = tiny_qwen2_vl(version=version)
    tok = _tokenizer(model, processor)
    rows = colour_rows(2)
    rows[1]["images"] = [shape_image("red", size=(64, 32)), shape_image("blue", size=(32, 48))]
    rows[1]["prompt"] = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
        {"type": "text", "text": "which is red?"}]}]
    rows.append({"prompt": "Say hi.", "chosen": "hi there", "rejected": "no"})
    pairs = build_vision_pairs(_records(rows), tok).items
    image_id = image_token_id(model.config)
    for pair in pairs:
        ids = torch.tensor([pair.prompt_ids])
        grid = pair.vision.tensors["image_grid_thw"] if pair.vision else None
        types = (ids == image_id).int()
        want, _ = model.model.get_rope_index(ids, types, grid)  # (3, 1, P)
        got, _ = mrope_positions(pair.prompt_ids, grid, image_id, 2)
        assert torch.equal(got, want[:, 0]), pair.index
    padded = VisionPairCollator(0, "first", "padded", mrope=True)(pairs)
    shared = VisionPairCollator(0, "first", "prefix_shared", mrope=True)(pairs)
    b = len(pairs)
    for i, pair in enumerate(pairs):  # the rejected answer's positions, in both layouts
        p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        row_padded = padded.position_ids[:, b + i, p:p + r]
        row, start = _segment_start(shared, i)
        row_shared = shared.position_ids[:, row, start + p + c:start + p + c + r]
        assert torch.equal(row_shared, row_padded)
        nxt = pair.vision.next_position if pair.vision else p
        assert row_padded[0].tolist() == list(range(nxt, nxt + r))
    policy = _policy(model, processor)
    with torch.no_grad():  # the plain twin: every layout scores as the padded one
        plain = policy.logps(padded).logps
        for layout in ("packed", "prefix_shared"):
            batch = VisionPairCollator(0, "first", layout, max_row_tokens=300, mrope=True)(pairs)
            torch.testing.assert_close(policy.logps(batch).logps, plain, atol=2e-5, rtol=1e-4)
    flat = VisionPairCollator(0, "first", "padded", mrope=True)(pairs)
    flat.position_ids = torch.arange(flat.input_ids.shape[1]).expand(3, *flat.input_ids.shape)
    with torch.no_grad():
        gap = (policy.logps(flat).logps - policy.logps(padded).logps).abs().max()
    assert gap > 5 * 2e-5, gap  # five times the layout test's tolerance


def _segment_start(batch, segment: int) -> tuple[int, int]:
    """The row and first column of a prefix-shared batch's segment (a pair's index)."""
    order = iter(batch.segment_order)
    for r, row in enumerate(batch.segments):
        for start, *_ in row:
            if next(order) == segment:
                return r, start
    raise ValueError(segment)


def test_a_sliding_window_shorter_than_a_row_refuses_the_segment_layouts():
    """One mask serves every layer in the segment layouts, so Gemma 3's local layers would
    see past their window: refused with the reason; padded (the model's own masks) is not."""
    from vlm_helpers import tiny_gemma3

    from dpokit.policies.vision_language.models import check_layout_window

    model, _ = tiny_gemma3(sliding_window=64)
    with pytest.raises(ValueError, match=r"batch_layout=prefix_shared: gemma3: its "
                       r"sliding-window layers attend 64 tokens back, and max_length=400"):
        check_layout_window(model.config, "prefix_shared", 400)
    assert check_layout_window(model.config, "padded", 400) == "padded"
    assert check_layout_window(model.config, "packed", 64) == "packed"
    assert check_layout_window(model.config, "auto", 400) == "padded"  # auto: the exact one
    assert check_layout_window(model.config, "auto", 64) == "prefix_shared"
    llava, _ = FAMILIES["llava"]()
    assert check_layout_window(llava.config, "prefix_shared", 4000) == "prefix_shared"


def test_each_pair_holds_its_own_rows_answers(family):
    """The chosen ids decode to the row's chosen answer and the rejected ids to its rejected
    one (a swap would pass the layout and training tests, which only compare layouts)."""
    _, model, processor = family
    tok = _tokenizer(model, processor)
    rows = colour_rows(4)
    pairs = build_vision_pairs(_records(rows), tok).items
    for pair, row in zip(pairs, rows, strict=True):
        chosen = tok.tokenizer.decode(pair.chosen_ids, skip_special_tokens=True)
        rejected = tok.tokenizer.decode(pair.rejected_ids, skip_special_tokens=True)
        assert row["chosen"] in chosen and row["rejected"] not in chosen, (chosen, row)
        assert row["rejected"] in rejected and row["chosen"] not in rejected, (rejected, row)
