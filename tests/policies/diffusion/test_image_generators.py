"""Image generators: Diffusion-DPO (a hand-computed loss with shared noise, the sign
conventions, training through the generic loop on a tiny diffusers UNet with LoRA) and DrPO
(the drift field on 2-D points with known answers, the online source and objective on a tiny
one-step generator)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import records, tiny_config

pytest.importorskip("diffusers")

from dpokit.objectives.drift import drift_field, drift_loss  # noqa: E402
from dpokit.policies.diffusion import (  # noqa: E402
    DiffusionPairCollator,
    DiffusionPolicy,
    DiffusionSource,
    DrPOObjective,
    DrPOSource,
    GeneratorPolicy,
    ImagePair,
    OneStepGenerator,
    WordEncoder,
    apply_lora,
    build_image_pairs,
    zscore,
)

WORDS = ["red", "blue", "circle", "square"]


def sigmoid(beta: float):
    """The registered DPO loss (``sigmoid``) as the run's objective, at ``beta``."""
    from dpokit.config import load_config
    from dpokit.objectives import build_objective

    return build_objective(load_config(None, beta=beta).loss)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        attention_head_dim=4, norm_num_groups=8)


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=100)


def pairs(n: int = 4) -> list[ImagePair]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        colour = torch.tensor([1.0, -1, -1] if i % 2 else [-1.0, -1, 1])[:, None, None]
        good = colour.expand(3, 8, 8).clone()
        bad = torch.rand(3, 8, 8, generator=g) * 2 - 1
        out.append(ImagePair(i, "a red square" if i % 2 else "a blue circle", good, bad))
    return out


# --- Diffusion-DPO ---------------------------------------------------------------------------
def test_diffusion_dpo_loss_by_hand_with_shared_noise():
    encoder = WordEncoder(WORDS, dim=8)
    unet, sched = tiny_unet(), scheduler()
    policy = DiffusionPolicy(unet, sched, encoder, reference="copy")
    with torch.no_grad():  # the policy moves away from its reference
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = DiffusionPairCollator(num_timesteps=100)(pairs(2))
    # by hand: one noise and timestep per pair, for chosen and rejected, policy and reference
    alpha = sched.alphas_cumprod[batch.timesteps].view(-1, 1, 1, 1)  # (E, 1, 1, 1)
    chosen, rejected = batch.images[:2], batch.images[2:]
    errors = {}
    for name, model in (("policy", unet), ("reference", policy.reference_scorer.unet)):
        for side, x0 in (("w", chosen), ("l", rejected)):
            noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * batch.noise
            eps = model(noisy, batch.timesteps,
                        encoder_hidden_states=encoder(batch.prompts)).sample
            errors[name, side] = (eps - batch.noise).pow(2).mean(dim=(1, 2, 3))  # (E,)
    beta = 50.0
    inside = -beta / 2 * ((errors["policy", "w"] - errors["reference", "w"])
                          - (errors["policy", "l"] - errors["reference", "l"]))
    by_hand = -F.logsigmoid(inside)  # Wallace et al. Eq. 14, T * omega folded into beta
    objective = sigmoid(beta)
    out = objective(policy, batch, policy.reference_logps(batch).logps)
    torch.testing.assert_close(out.losses, by_hand, atol=1e-5, rtol=1e-5)
    # the same batch scores the same (the draw is in the batch), another draw differs
    torch.testing.assert_close(policy.logps(batch).logps, policy.logps(batch).logps)
    other = DiffusionPairCollator(num_timesteps=100)(pairs(2), torch.Generator().manual_seed(9))
    assert not torch.allclose(policy.logps(other).logps, policy.logps(batch).logps)


def test_a_denoiser_with_other_input_names_plugs_in_its_call():
    """A transformer denoiser (DiT, SD3) names its inputs differently: the policy calls it
    through ``denoise``; a call predicting zeros scores -1/2 mean(noise^2)."""
    calls = []

    def zeros(model, noisy, timesteps, condition):
        calls.append(noisy.shape)
        return torch.zeros_like(noisy)

    policy = DiffusionPolicy(tiny_unet(), scheduler(), WordEncoder(WORDS, dim=8),
                             reference="copy", denoise=zeros)
    batch = DiffusionPairCollator(num_timesteps=100)(pairs(2))
    scores = policy.logps(batch).logps
    expected = -0.5 * batch.noise.pow(2).mean(dim=(1, 2, 3)).repeat(2)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(policy.reference_logps(batch).logps, expected)
    assert calls[0] == (4, 3, 8, 8)
    assert policy.generate(["a red square"], steps=2).shape == (1, 3, 8, 8)


def test_diffusion_dpo_sign_conventions():
    """Lower denoising error on the chosen image than the reference has -> reward > 0 and a
    loss below log 2; on the rejected -> the opposite."""
    class Fixed(DiffusionPolicy):  # scores set by hand: -1/2 * error
        def __init__(self, errors):
            self.errors = errors

        def logps(self, batch, *, sampling_norm=False):
            from dpokit.core.types import SequenceScores

            return SequenceScores(-0.5 * self.errors, torch.ones(2, dtype=torch.long))

    objective = sigmoid(10.0)
    ref = -0.5 * torch.tensor([0.5, 0.5])  # reference errors: chosen 0.5, rejected 0.5
    batch = DiffusionPairCollator()(pairs(1))
    better = objective(Fixed(torch.tensor([0.4, 0.5])), batch, ref)
    worse = objective(Fixed(torch.tensor([0.6, 0.5])), batch, ref)
    assert better.losses.item() < math.log(2) < worse.losses.item()
    assert better.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-5)


def test_the_collator_puts_each_chosen_image_first_and_shares_noise_within_a_pair():
    """Sample i of a batch of E pairs is pair i's chosen image, sample E + i its rejected one
    (what the loss reads as chosen and rejected): a collator that swapped them would train
    the model towards the rejected images, and every other test is symmetric in the two."""
    batch = DiffusionPairCollator(num_timesteps=100)(pairs(3))
    for i, pair in enumerate(pairs(3)):
        assert torch.equal(batch.images[i], pair.chosen)
        assert torch.equal(batch.images[3 + i], pair.rejected)
    assert batch.noise.shape[0] == 3 and batch.timesteps.shape == (3,)  # one draw per pair


def test_diffusion_source_draws_are_a_function_of_the_step():
    collate = DiffusionPairCollator(num_timesteps=100)
    a = DiffusionSource(pairs(4), collate, batch_size=2, seed=3)
    b = DiffusionSource(pairs(4), collate, batch_size=2, seed=3)
    first, again = a.micro_batches(5)[0], b.micro_batches(5)[0]
    assert torch.equal(first.noise, again.noise) and torch.equal(first.timesteps, again.timesteps)
    assert not torch.equal(a.micro_batches(6)[0].noise, first.noise)
    assert not a.precomputable


def test_image_pair_rows(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "blue.png")
    rows = [{"prompt": "a red square", "chosen": str(tmp_path / "red.png"),
             "rejected": str(tmp_path / "blue.png")},
            {"prompt": "a red square", "chosen": str(tmp_path / "red.png"),
             "rejected": str(tmp_path / "missing.png")}]
    kept = build_image_pairs(records(rows), size=8, on_bad_rows="skip")
    assert kept.report.kept == 1 and kept.report.skipped["no image file 'missing.png'"] == 0
    assert sum(kept.report.skipped.values()) == 1
    assert kept[0].chosen.shape == (3, 8, 8)
    torch.testing.assert_close(kept[0].chosen[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    from dpokit.data.io import DataError

    with pytest.raises(DataError, match="mem.jsonl, row 2, field 'rejected': no image file"):
        build_image_pairs(records(rows), size=8)


def test_diffusion_dpo_trains_through_the_loop_with_lora(tmp_path):
    from dpokit.train import make_trainer

    encoder = WordEncoder(WORDS, dim=8).requires_grad_(False)
    unet = apply_lora(tiny_unet(), r=4, alpha=4)
    assert all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    policy = DiffusionPolicy(unet, scheduler(), encoder, reference="adapter")
    collate = DiffusionPairCollator(num_timesteps=100)
    objective = sigmoid(200.0)
    source = DiffusionSource(pairs(8), collate, batch_size=8)
    with pytest.raises(ValueError, match="precompute_ref_logps=false"):
        make_trainer(tiny_config(tmp_path, precompute_ref_logps=True), policy, objective, source)
    config = tiny_config(tmp_path, learning_rate=3e-3, max_steps=30, batch_size=8)
    result = make_trainer(config, policy, objective, source, log=lambda _: None).train()
    losses = [h["loss"] for h in result.history]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0: policy == reference
    assert sum(losses[-5:]) / 5 < math.log(2) - 0.05, losses
    assert result.history[-1]["rewards/accuracies"] >= 0.75


# --- DrPO: the drift field ---------------------------------------------------------------------
def _force(x, positive, negative, **options):
    """The geometry of the pulls toward positives and away from negatives, without the
    generator's own samples as targets (one point's masked self entry keeps an affinity of
    1e-3 in the official form, which tilts a field that is zero otherwise, and the per-radius
    RMS normalization makes the tilt unit size)."""
    options.setdefault("own_samples_negative", False)
    return drift_field(torch.tensor([x]), torch.tensor([positive]), torch.tensor([negative]),
                       radii=(0.5, 1.0), **options).force[0]


def test_drift_attracts_to_a_single_positive():
    # the negative sits on the generated point: only the pull toward the positive is left
    force = _force([[0.0, 0.0]], [[2.0, 0.0]], [[0.0, 0.0]])
    assert force[0, 0] > 0 and abs(force[0, 1]) < 1e-6


def test_drift_repels_from_a_single_negative():
    # the positive sits on the generated point: only the push away from the negative is left
    force = _force([[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 3.0]])
    assert force[0, 1] < 0 and abs(force[0, 0]) < 1e-6


def test_drift_is_zero_at_balance():
    # positives at +-e1, negatives at +-e2 around the point: the pulls cancel
    force = _force([[0.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]])
    assert force.abs().max() < 1e-6
    # a positive and a negative at the same place cancel too
    force = _force([[0.0, 0.0]], [[1.0, 1.0]], [[1.0, 1.0]])
    assert force.abs().max() < 1e-6


def test_drift_known_direction_scale_free_and_the_loss_gradient_follows_it():
    # x = 0, positive (1, 0), negative (0, 3): V is along (1, 0) - (0, 3), normalized by its RMS
    force = _force([[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 3.0]])
    torch.testing.assert_close(force[0] / force[0].norm(), torch.tensor([1.0, -3.0]) / 10 ** 0.5,
                               atol=1e-5, rtol=1e-5)
    scaled = _force([[0.0, 0.0]], [[10.0, 0.0]], [[0.0, 30.0]])
    torch.testing.assert_close(scaled, force)  # distances in units of their mean
    x = torch.zeros(1, 1, 2, requires_grad=True)
    drift_loss(x, torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 3.0]]]),
               radii=(0.5, 1.0)).sum().backward()
    assert torch.dot(-x.grad[0, 0], force[0]) > 0  # a descent step moves x along V


def _field_by_hand(x, positive, negative, radius, w_pos, w_neg, own, mask_self):
    """The official field at one radius (laplacian), entry by entry in plain Python."""
    n = len(x)
    targets = [(t, 1.0, "own") for t in x] + [(t, w_neg, "-") for t in negative] + \
        [(t, w_pos, "+") for t in positive]
    dist = [[math.dist(xi, t) for t, _, _ in targets] for xi in x]
    weights = [w for _, w, _ in targets]
    weighted = sum(d * w for row in dist for d, w in zip(row, weights, strict=True))
    scale = weighted / (n * len(targets)) / (sum(weights) / len(targets))
    s = scale / math.sqrt(len(x[0]))
    masked = [[j == i or (mask_self and j == n + i) for j in range(len(targets))]
              for i in range(n)]
    logit = [[-dist[i][j] / scale / radius - (100 / radius) * masked[i][j]
              for j in range(len(targets))] for i in range(n)]
    row = [sum(math.exp(v) for v in logit[i]) for i in range(n)]
    col = [sum(math.exp(logit[i][j]) for i in range(n)) for j in range(len(targets))]
    a = [[math.sqrt(max(math.exp(logit[i][j]) / row[i] * math.exp(logit[i][j]) / col[j],
                        1e-6)) * weights[j] for j in range(len(targets))] for i in range(n)]
    field = []
    for i in range(n):
        side = [kind if (kind != "own" or own) else None for _, _, kind in targets]
        m_pos = sum(a[i][j] for j in range(len(targets)) if side[j] == "+")
        m_neg = sum(a[i][j] for j in range(len(targets)) if side[j] in ("own", "-"))
        v = [0.0] * len(x[0])
        for j, (t, _, _) in enumerate(targets):
            c = a[i][j] * m_neg if side[j] == "+" else (
                -a[i][j] * m_pos if side[j] in ("own", "-") else 0.0)
            v = [vk + c * (tk - xk) / s for vk, tk, xk in zip(v, t, x[i], strict=True)]
        field.append(v)
    rms = math.sqrt(sum(v * v for row_ in field for v in row_) / (n * len(x[0])))
    return [[v / rms for v in row_] for row_ in field]


@pytest.mark.parametrize("weight", [1.0, 3000.0])
@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("mask_self", [False, True])
def test_drift_field_equals_the_official_form_computed_by_hand(own, mask_self, weight):
    # three generated points, two positives, three negatives (the generated points themselves
    # when masked, as the reference drift: there the own block is proportional to the
    # negatives and changes nothing after the RMS normalization); without the mask the two
    # forms differ by up to 2.96 at weight 1 and 0.0027 at the official 3000
    x = [[0.0, 0.0], [1.0, 0.5], [-0.5, 2.0]]
    positive = [[2.0, 1.0], [1.5, -1.0]]
    negative = [list(p) for p in x] if mask_self else [[-1.0, -1.0], [0.5, 3.0], [3.0, 0.0]]
    expected = _field_by_hand(x, positive, negative, 0.2, weight, weight, own, mask_self)
    got = drift_field(torch.tensor([x]), torch.tensor([positive]), torch.tensor([negative]),
                      radii=(0.2,), positive_weight=weight, negative_weight=weight,
                      mask_negative_self=mask_self, own_samples_negative=own).force[0]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_the_official_field_makes_samples_repel_each_other():
    # two samples side by side, a positive above and a negative below them, symmetric: the
    # variant without own samples moves each only up (no sideways force); the official field
    # also pushes them apart
    x = [[-0.1, 0.0], [0.1, 0.0]]
    official = _force(x, [[0.0, 1.0]], [[0.0, -1.0]], own_samples_negative=True)
    variant = _force(x, [[0.0, 1.0]], [[0.0, -1.0]])
    assert abs(variant[0, 0]) < 1e-5 and abs(variant[1, 0]) < 1e-5
    assert official[0, 0] < -1e-3 and official[1, 0] > 1e-3
    assert official[0, 1] > 0 and variant[0, 1] > 0


def test_reference_drift_masks_each_sample_from_itself():
    # two samples: each is pulled to the references and pushed from the other sample (not
    # from itself); the picture is symmetric, and the mask changes the field
    x = torch.tensor([[[-2.0, 0.0], [2.0, 0.0]]])
    reference = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])
    masked = drift_field(x, reference, x, radii=(0.5,), mask_negative_self=True).force[0]
    torch.testing.assert_close(masked[0], -masked[1])
    unmasked = drift_field(x, reference, x, radii=(0.5,)).force[0]
    assert not torch.allclose(masked, unmasked)
    with pytest.raises(ValueError, match="one negative per generated sample"):
        drift_field(x, reference, x[:, :1], radii=(0.5,), mask_negative_self=True)


def test_zscore_within_prompt():
    z = zscore(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    torch.testing.assert_close(z[0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4, rtol=0)
    assert torch.equal(z[1], torch.zeros(3))


# --- DrPO: the online loop on a tiny one-step generator ------------------------------------
def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A black-box reward (no gradient): how red the image is."""
    with torch.no_grad():
        return (images[:, 0] - images[:, 1:].mean(1)).mean(dim=(1, 2)).cpu()


def pooled(images: torch.Tensor) -> torch.Tensor:
    """A frozen feature map: 2x2 average-pooled colours."""
    return F.adaptive_avg_pool2d(images, 2).flatten(1)  # (N, 12)


def test_drpo_raises_the_reward_through_the_loop(tmp_path):
    from dpokit.train import make_trainer

    torch.manual_seed(0)
    generator = OneStepGenerator(noise_dim=8, condition_dim=8, size=8, width=16)
    policy = GeneratorPolicy(generator, WordEncoder(WORDS, dim=8))
    settings = tiny_config(tmp_path, samples_per_prompt=8, num_positive=2, num_negative=2).drpo
    source = DrPOSource(["a red circle", "a blue square"], redness, pooled, settings,
                        batch_size=2, seed=1)
    before = redness(policy.generate(["a red circle"] * 16, seed=5), []).mean()
    config = tiny_config(tmp_path, learning_rate=3e-3, max_steps=25)
    result = make_trainer(config, policy, DrPOObjective(pooled, settings), source,
                          log=lambda _: None).train()
    after = redness(policy.generate(["a red circle"] * 16, seed=5), []).mean()
    assert after > before + 0.1, (before, after)
    assert "samples/reward" in result.history[0] and "drift/reference" in result.history[0]
    rewards = [h["samples/reward"] for h in result.history]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5
    # the reference generator stayed the base
    base = policy.generate(["a red circle"] * 16, seed=5, reference=True)
    assert redness(base, []).mean() == pytest.approx(before.item(), abs=1e-5)
    with pytest.raises(NotImplementedError, match="no likelihood"):
        policy.logps(None)


# --- the demonstration's world ---------------------------------------------------------------
def test_shape_reward_and_diversity_on_known_images():
    import random

    from dpokit.apps.worlds.image_shapes import diversity, prompts, render, reward, to_unit

    rng = random.Random(0)
    names = prompts()
    images = torch.stack([to_unit(render(p, 32, rng)) for p in names])
    right = reward(images, names)
    assert right.min() > 0.9  # the prompt's own shape and colour, sharp
    wrong_colour = reward(images, names[3:] + names[:3])  # same shape, another colour
    assert (wrong_colour < right - 0.2).all()
    blurred = reward(F.avg_pool2d(images, 5, 1, 2), names)
    assert (blurred < right - 0.2).all()
    assert reward(torch.full((1, 3, 32, 32), 235 / 127.5 - 1), names[:1]).item() == 0.0
    assert diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_drpo_settings_are_a_config_section():
    from dpokit.config import ConfigError, load_config

    cfg = load_config("src/dpokit/recipes/drpo_shapes.yaml", [])
    assert cfg.drpo.samples_per_prompt == 8 and cfg.drpo.drift_radii == [0.02, 0.05, 0.2]
    with pytest.raises(ConfigError, match="num_positive \\+ num_negative \\(4 \\+ 5\\) exceed "
                                          "samples_per_prompt=8"):
        load_config(None, ["num_positive=4", "num_negative=5"])
    with pytest.raises(ConfigError, match="drift_radii"):
        load_config(None, ["drift_radii=[0.1, -1]"])
    assert load_config("src/dpokit/recipes/diffusion_dpo_shapes.yaml", []).loss.beta == 500.0


def test_drift_features_weigh_both_parts_equally_on_real_images():
    from dpokit.apps.worlds.image_shapes import DriftFeatures, ShapeFeatures, dataset

    torch.manual_seed(0)
    space = DriftFeatures(ShapeFeatures(), size=16)
    real, _ = dataset(64, 16, 7)
    with torch.no_grad():
        out = space(real)
    assert out.shape == (64, 64 + 3 * 8 * 8)
    cnn, pixels = float(out[:, :64].norm(dim=1).mean()), float(out[:, 64:].norm(dim=1).mean())
    assert cnn == pytest.approx(1.0, rel=0.2) and pixels == pytest.approx(1.0, rel=0.2)


def test_latent_model_noises_latents_and_encodes_each_batch_once():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 8), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2).eval()
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        attention_head_dim=4, norm_num_groups=8)
    policy = DiffusionPolicy(unet, scheduler(), WordEncoder(WORDS, dim=8), reference="copy",
                             vae=vae)
    with pytest.raises(ValueError, match=r"noise \(3, 8, 8\) does not match what is noised "
                                         r"\(4, 4, 4\): give DiffusionPairCollator"):
        policy.logps(DiffusionPairCollator(num_timesteps=100)(pairs(2)))
    batch = DiffusionPairCollator(num_timesteps=100, noise_shape=(4, 4, 4))(pairs(2))
    encodes = []
    original = vae.encode
    vae.encode = lambda x: (encodes.append(x.shape), original(x))[1]
    reference = policy.reference_logps(batch).logps
    scores = policy.logps(batch).logps
    assert len(encodes) == 1 and encodes[0] == (4, 3, 8, 8)
    assert scores.shape == reference.shape == (4,)
    torch.testing.assert_close(scores, reference)  # a fresh copy: the same numbers


def test_drpo_loss_includes_its_reference_drift_term(tmp_path):
    """Per prompt, loss = spread x preference drift + reference_weight x reference drift: the
    difference between two reference weights is that weight times the logged reference
    term, and a prompt whose rewards are all equal (spread 0) carries only that term."""
    import dataclasses

    from dpokit.policies.diffusion.drpo import DriftBatch

    torch.manual_seed(0)
    policy = GeneratorPolicy(OneStepGenerator(noise_dim=8, condition_dim=8, size=8, width=16),
                             WordEncoder(WORDS, dim=8))
    p, k = 2, 4
    batch = DriftBatch(torch.arange(p), ["a red circle", "a blue square"],
                       torch.randn(p, k, 8), torch.randn(p, 2, 12), torch.randn(p, 2, 12),
                       torch.randn(p, k, 12), torch.randn(p, k), torch.tensor([1.0, 0.0]))
    settings = tiny_config(tmp_path).drpo
    outs = {}
    for weight in (0.0, 0.5):
        objective = DrPOObjective(pooled, dataclasses.replace(settings, reference_weight=weight))
        with torch.no_grad():
            outs[weight] = objective(policy, batch)
    reference = outs[0.5].metrics.sums["drift/reference"]  # summed over the P prompts
    gap = float((outs[0.5].losses - outs[0.0].losses).sum())
    assert reference > 0 and gap == pytest.approx(0.5 * reference, rel=1e-5)
    # the equal-reward prompt: no preference term
    assert float(outs[0.0].losses[1]) == pytest.approx(0.0, abs=1e-7)
