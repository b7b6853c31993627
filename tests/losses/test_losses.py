"""Each loss against numbers derived by hand, plus gradient and property checks.

Shared case (unless a test says otherwise): policy log-probs chosen = -1, rejected = -2;
reference log-probs both -1.5. Log-ratios: chosen +0.5, rejected -0.5, so h = 1.
"""

import math

import pytest
import torch
from conftest import REPO

from dpokit.losses import LossParams, available_losses, get_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def case(dtype=torch.float64, requires_grad=False):
    t = lambda v: torch.tensor([v], dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return t(-1.0), t(-2.0), t(-1.5), t(-1.5)


def run(name, params, *tensors):
    spec = get_loss(name)
    return spec.fn(*tensors, params)


def test_sigmoid_hand_derived():
    """-log σ(β h) = softplus(-β h); β=0.1, h=1 -> softplus(-0.1) = 0.644397.
    Rewards: β·(±0.5) = ±0.05."""
    out = run("sigmoid", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(softplus(-0.1), abs=1e-12)
    assert out.losses.item() == pytest.approx(0.6443967, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.05)
    assert out.rejected_rewards.item() == pytest.approx(-0.05)


def test_cdpo_hand_derived():
    """(1-ε)·softplus(-z) + ε·softplus(z), z=β h=0.1, ε=0.25.
    softplus(z) = softplus(-z) + z, so the loss = softplus(-0.1) + 0.25·0.1 = 0.669397."""
    out = run("cdpo", LossParams(beta=0.1, label_smoothing=0.25), *case())
    assert out.losses.item() == pytest.approx(0.6443967 + 0.025, abs=1e-6)


def test_robust_hand_derived():
    """[(1-ε)·softplus(-z) - ε·softplus(z)] / (1-2ε), z=0.1, ε=0.25:
    (0.75·0.6443967 - 0.25·0.7443967) / 0.5 = 0.5943967."""
    out = run("robust", LossParams(beta=0.1, label_smoothing=0.25), *case())
    assert out.losses.item() == pytest.approx(0.5943967, abs=1e-6)


def test_robust_with_zero_smoothing_equals_sigmoid():
    torch.manual_seed(0)
    x = [torch.randn(7, dtype=torch.float64) for _ in range(4)]
    a = run("robust", LossParams(beta=0.3, label_smoothing=0.0), *x)
    b = run("sigmoid", LossParams(beta=0.3), *x)
    torch.testing.assert_close(a.losses, b.losses)
    c = run("cdpo", LossParams(beta=0.3, label_smoothing=0.0), *x)
    torch.testing.assert_close(c.losses, b.losses)


def test_robust_rejects_half_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        run("robust", LossParams(label_smoothing=0.5), *case())


def test_ipo_hand_derived():
    """(h - 1/(2β))², β=0.1, h=1 -> (1 - 5)² = 16."""
    out = run("ipo", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(16.0)
    assert not get_loss("ipo").length_normalized
    assert get_loss("ipo_norm").length_normalized


def test_ipo_norm_length_averaging_in_trainer():
    """ipo_norm divides log-probs by completion lengths before the same formula:
    chosen -4 over 4 tokens -> -1, rejected -4 over 2 -> -2, refs -6/4=-1.5 and -3/2=-1.5,
    so h = 1 again and the loss is 16 for β=0.1."""
    from dpokit.core import PairLogps
    from dpokit.objectives import PreferenceObjective as Objective

    objective = Objective.from_names("ipo_norm", None, LossParams(beta=0.1))
    logps = PairLogps(
        torch.tensor([-4.0]), torch.tensor([-4.0]), torch.tensor([4]), torch.tensor([2])
    )
    out = objective.losses(logps, torch.tensor([-6.0]), torch.tensor([-3.0]), {})
    assert out.losses.item() == pytest.approx(16.0)


def test_hinge_hand_derived():
    """max(0, 1 - β h): β=0.1 -> 0.9; β=2 -> 0 (margin already met)."""
    assert run("hinge", LossParams(beta=0.1), *case()).losses.item() == pytest.approx(0.9)
    assert run("hinge", LossParams(beta=2.0), *case()).losses.item() == 0.0


def test_simpo_hand_derived():
    """-log σ(β(avg_w - avg_l) - γ), avg_w=-1, avg_l=-2, β=2, γ=0.5: softplus(-1.5)=0.201413.
    Rewards are β·avg log-prob: -2 and -4. No reference is read."""
    out = get_loss("simpo").fn(
        torch.tensor([-1.0]),
        torch.tensor([-2.0]),
        None,
        None,
        LossParams(beta=2.0, simpo_gamma=0.5),
    )
    assert out.losses.item() == pytest.approx(softplus(-1.5), abs=1e-6)
    assert out.losses.item() == pytest.approx(0.2014133, abs=1e-6)
    assert out.chosen_rewards.item() == -2.0 and out.rejected_rewards.item() == -4.0


def test_sigmoid_gradient_matches_closed_form():
    """d/d logπ(y_w) of -log σ(β h) is -β σ(-β h); for the rejected it is +β σ(-β h)."""
    chosen, rejected, ref_c, ref_r = case(requires_grad=True)
    out = run("sigmoid", LossParams(beta=0.1), chosen, rejected, ref_c.detach(), ref_r.detach())
    out.losses.sum().backward()
    expected = 0.1 * torch.sigmoid(torch.tensor(-0.1, dtype=torch.float64))
    assert chosen.grad.item() == pytest.approx(-expected.item())
    assert rejected.grad.item() == pytest.approx(expected.item())


NAMES = sorted({spec.name for spec in available_losses().values()})


def generic_extras(n: int, dtype=torch.float64) -> dict:
    """Every extra any loss may read: token counts, an ODPO offset, KTO labels (mixed),
    GW-DPO's privilege levels (mixed gaps)."""
    return {
        "chosen_tokens": torch.full((n,), 4.0, dtype=dtype),
        "rejected_tokens": torch.full((n,), 6.0, dtype=dtype),
        "offset": torch.full((n,), 0.3, dtype=dtype),
        "level_obeyed": torch.tensor([i % 3 for i in range(n)], dtype=dtype),
        "level_overridden": torch.tensor([i % 3 + i % 2 for i in range(n)], dtype=dtype),
        "label": torch.tensor([1.0, 0.0] * (n // 2) + [1.0] * (n % 2), dtype=dtype),
    }


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    """Autograd matches finite differences for every registered loss (float64, random case)."""
    spec = get_loss(name)
    torch.manual_seed(1)
    # log-probs strictly below 0 (ORPO takes log(1 - p)); distinct values (AOT sorts)
    chosen = (-0.2 - torch.rand(5, dtype=torch.float64)).requires_grad_()
    rejected = (-0.2 - torch.rand(5, dtype=torch.float64)).requires_grad_()
    refs = (torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64))
    if not spec.needs_reference:
        refs = (None, None)
    params = LossParams(beta=0.7, label_smoothing=0.1, simpo_gamma=0.3)
    extras = generic_extras(5)
    if name == "bco_pair":  # δ is a detached batch statistic: hold it fixed
        extras["bco_delta"] = torch.tensor(0.1, dtype=torch.float64)
    if name == "beta_dpo":  # M0, σ and the batch's β are detached statistics: hold them fixed
        extras.update(beta_dpo_gap=torch.tensor(0.2, dtype=torch.float64),
                      beta_dpo_gap_std=torch.tensor(1.0, dtype=torch.float64))
        params = LossParams(beta=0.7, beta_dpo_a=0.0)

    def fn(c, r):
        if spec.stochastic:  # the same draw in every evaluation of the finite differences
            torch.manual_seed(2)
        return spec.fn(c, r, *refs, params, extras).losses
    if name == "kto":  # z0 is a detached estimate from the KL completions: check d/d chosen
        assert torch.autograd.gradcheck(lambda c: fn(c, rejected.detach()), (chosen,))
        return
    assert torch.autograd.gradcheck(fn, (chosen, rejected))


# Not monotone in the chosen log-ratio, by design (each has its own test below):
# APO-down pushes the chosen likelihood down; DiscoPOP's blend is non-monotone near h = 0.
NON_MONOTONE = {"apo_down", "discopop"}


@pytest.mark.parametrize("name", sorted(set(NAMES) - NON_MONOTONE))
def test_rewards_detached_and_loss_decreases_with_chosen_ratio(name):
    spec = get_loss(name)
    params = LossParams(beta=0.1, label_smoothing=0.1, simpo_gamma=0.3)
    rejected = torch.tensor([-2.0])
    refs = (torch.tensor([-1.5]), torch.tensor([-1.5])) if spec.needs_reference else (None, None)
    extras = {k: v[:1].float() for k, v in generic_extras(1).items()}  # label 1 (desirable)
    values = []
    for c in (-3.0, -2.0, -1.0, -0.5):
        chosen = torch.tensor([c], requires_grad=True)
        out = spec.fn(chosen, rejected, *refs, params, extras)
        assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
        assert out.losses.requires_grad
        values.append(out.losses.item())
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)), values
    assert values[0] > values[-1]


def test_unknown_loss_suggests_nearest():
    with pytest.raises(KeyError, match="Did you mean 'sigmoid'"):
        get_loss("sigmod")


def test_import_needs_only_torch():
    import subprocess
    import sys

    code = (
        "import sys, dpokit.losses; heavy = [m for m in ('transformers', 'peft', 'accelerate',"
        " 'datasets') if m in sys.modules]; print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_apo_down_lowers_chosen_and_rewards_a_lower_rejected():
    """APO-down: loss grows with the chosen log-ratio when the margin is already large, and
    always falls as the rejected log-ratio drops."""
    p = LossParams(beta=1.0)
    ref = torch.tensor([0.0])

    def loss(c, r):
        return run("apo_down", p, torch.tensor([c]), torch.tensor([r]), ref, ref).losses.item()

    assert loss(1.0, -6.0) > loss(0.0, -6.0)  # the chosen is pushed down
    assert loss(0.0, -1.0) > loss(0.0, -2.0) > loss(0.0, -3.0)


def test_discopop_limits_are_logistic_and_exponential():
    """m = σ(z/τ) -> 0 for z << 0 (pure DPO loss), -> 1 for z >> 0 (exp(-z))."""
    p = LossParams(beta=1.0, discopop_tau=0.05)
    ref = torch.tensor([0.0])
    low = run("discopop", p, torch.tensor([-3.0]), torch.tensor([0.0]), ref, ref).losses.item()
    high = run("discopop", p, torch.tensor([3.0]), torch.tensor([0.0]), ref, ref).losses.item()
    assert low == pytest.approx(softplus(3.0), rel=1e-6)
    assert high == pytest.approx(math.exp(-3.0), rel=1e-6)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --- the rest of the family, each on the shared case: u_w = +0.5, u_l = -0.5, h = 1, β = 0.1 ---


def test_sigmoid_norm_is_dpo_on_averages():
    """The trainer hands it per-token averages; the formula is DPO's: softplus(-0.1)."""
    assert get_loss("sigmoid_norm").length_normalized
    out = run("sigmoid_norm", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(softplus(-0.1))


def test_exo_pair_hand_derived():
    """z = βh = 0.1, ε = 1e-3 (label_smoothing 0 -> default):
    σ(z)(log σ(z) - log(1-ε)) + σ(-z)(log σ(-z) - log ε)
    = 0.524979·(-0.644397 + 0.0010005) + 0.475021·(-0.744397 + 6.907755) = 2.589955."""
    out = run("exo_pair", LossParams(beta=0.1), *case())
    expected = sigmoid(0.1) * (-softplus(-0.1) - math.log(1 - 1e-3)) + sigmoid(-0.1) * (
        -softplus(0.1) - math.log(1e-3)
    )
    assert out.losses.item() == pytest.approx(expected, rel=1e-9)
    assert out.losses.item() == pytest.approx(2.589955, abs=1e-5)


def test_nca_pair_hand_derived():
    """r_w = 0.05, r_l = -0.05: softplus(-0.05) + ½ softplus(0.05) + ½ softplus(-0.05)
    = 0.668259 + 0.359130 + 0.334130 = 1.361519."""
    out = run("nca_pair", LossParams(beta=0.1), *case())
    expected = softplus(-0.05) + 0.5 * softplus(0.05) + 0.5 * softplus(-0.05)
    assert out.losses.item() == pytest.approx(expected, rel=1e-9)
    assert out.losses.item() == pytest.approx(1.3619193, abs=1e-6)


def test_bco_pair_hand_derived():
    """r_w = 0.05, r_l = -0.05. Batch-mean δ = 0: 2·softplus(-0.05) = 1.336536.
    Given δ = 0.1: softplus(0.05) + softplus(-0.15) = 0.718775 + 0.623144 = 1.341919."""
    out = run("bco_pair", LossParams(beta=0.1), *case())
    assert out.losses.item() == pytest.approx(2 * softplus(-0.05), rel=1e-9)
    out = get_loss("bco_pair").fn(*case(), LossParams(beta=0.1), {"bco_delta": torch.tensor(0.1)})
    assert out.losses.item() == pytest.approx(softplus(0.05) + softplus(-0.15), rel=1e-9)


def test_sppo_hard_hand_derived():
    """(u_w - 1/(2β))² + (u_l + 1/(2β))² = (0.5 - 5)² + (-0.5 + 5)² = 40.5."""
    assert run("sppo_hard", LossParams(beta=0.1), *case()).losses.item() == pytest.approx(40.5)


def test_aot_sorts_the_batch():
    """Two pairs: π log-probs chosen (-1, -3), rejected (-2, -2); reference all -1.5.
    aot: Δπ = (1, -1) sorted (-1, 1), Δref = (0, 0): losses softplus(0.1), softplus(-0.1).
    aot_unpaired: u_w = (0.5, -1.5) sorted (-1.5, 0.5), u_l = (-0.5, -0.5): deltas (-1, 1),
    the same numbers by another route. With ε = 0.2: 0.8·softplus(0.1) + 0.2·softplus(-0.1)."""
    c, r = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])
    ref = torch.tensor([-1.5, -1.5])
    want = torch.tensor([softplus(0.1), softplus(-0.1)])
    for name in ("aot", "aot_unpaired"):
        out = run(name, LossParams(beta=0.1), c, r, ref, ref)
        torch.testing.assert_close(out.losses, want)
    out = run("aot", LossParams(beta=0.1, label_smoothing=0.2), c, r, ref, ref)
    assert out.losses[0].item() == pytest.approx(
        0.8 * softplus(0.1) + 0.2 * softplus(-0.1), rel=1e-6
    )
    assert get_loss("aot").batch_level and get_loss("aot_unpaired").batch_level


def test_apo_zero_and_down_hand_derived():
    """APO-zero: (1 - σ(0.05)) + σ(-0.05) = 2σ(-0.05) = 0.975021.
    APO-down: σ(0.05) + 1 - σ(0.1) = 0.512497 + 0.475021 = 0.987518."""
    assert run("apo_zero", LossParams(beta=0.1), *case()).losses.item() == pytest.approx(
        2 * sigmoid(-0.05), rel=1e-9
    )
    assert run("apo_down", LossParams(beta=0.1), *case()).losses.item() == pytest.approx(
        sigmoid(0.05) + 1 - sigmoid(0.1), rel=1e-9
    )


def test_discopop_hand_derived():
    """z = 0.1, τ = 0.05: m = σ(2) = 0.880797;
    (1-m)·softplus(-0.1) + m·e^{-0.1} = 0.119203·0.644397 + 0.880797·0.904837 = 0.873792."""
    out = run("discopop", LossParams(beta=0.1, discopop_tau=0.05), *case())
    m = sigmoid(2.0)
    assert out.losses.item() == pytest.approx(
        (1 - m) * softplus(-0.1) + m * math.exp(-0.1), rel=1e-9
    )
    assert out.losses.item() == pytest.approx(0.8737921, abs=1e-6)


def test_odpo_hand_derived_and_offset_from_scores():
    """Δ = 0.5: -log σ(0.1 - 0.5) = softplus(0.4) = 0.913015. Δ = 0 is DPO.
    From scores 3 and 1 with α = 0.5: Δ = 0.5·log(1 + 2) = 0.549306."""
    from dpokit.losses.paired import odpo_offset_from_scores

    spec = get_loss("odpo")
    assert spec.extra_columns == ("offset",)
    out = spec.fn(*case(), LossParams(beta=0.1), {"offset": torch.tensor([0.5])})
    assert out.losses.item() == pytest.approx(softplus(0.4), rel=1e-9)
    out = spec.fn(*case(), LossParams(beta=0.1), {"offset": torch.tensor([0.0])})
    assert out.losses.item() == pytest.approx(softplus(-0.1), rel=1e-9)
    assert odpo_offset_from_scores(3.0, 1.0, alpha=0.5) == pytest.approx(0.5 * math.log(3))


def test_rdpo_hand_derived():
    """|y_w| = 30, |y_l| = 10, α = 0.01: -log σ(0.1 - 0.2) = softplus(0.1) = 0.744397."""
    extras = {"chosen_tokens": torch.tensor([30.0]), "rejected_tokens": torch.tensor([10.0])}
    out = get_loss("rdpo").fn(*case(), LossParams(beta=0.1, rdpo_alpha=0.01), extras)
    assert out.losses.item() == pytest.approx(softplus(0.1), rel=1e-6)


def test_cpo_hand_derived():
    """Summed log-probs -1 and -2, |y_w| = 4: softplus(-0.1) + 1.0·(1/4) = 0.894397."""
    extras = {"chosen_tokens": torch.tensor([4.0]), "rejected_tokens": torch.tensor([4.0])}
    out = get_loss("cpo").fn(
        torch.tensor([-1.0]), torch.tensor([-2.0]), None, None, LossParams(beta=0.1), extras
    )
    assert out.losses.item() == pytest.approx(softplus(-0.1) + 0.25, rel=1e-6)


def test_orpo_hand_derived():
    """Averages -1 and -2. log odds = (−1 + 2) − (log(1 − e^{−1}) − log(1 − e^{−2}))
    = 1 − (−0.458675 + 0.145413) = 1.313262; loss = NLL 1 + 0.1·softplus(−1.313262)
    = 1 + 0.1·0.238183 = 1.023818."""
    assert get_loss("orpo").length_normalized and not get_loss("orpo").needs_reference
    out = get_loss("orpo").fn(
        torch.tensor([-1.0], dtype=torch.float64),
        torch.tensor([-2.0], dtype=torch.float64),
        None,
        None,
        LossParams(beta=0.1),
        {},
    )
    log_odds = 1 - (math.log(1 - math.exp(-1)) - math.log(1 - math.exp(-2)))
    assert log_odds == pytest.approx(1.313262, abs=1e-6)
    assert out.losses.item() == pytest.approx(1 + 0.1 * softplus(-log_odds), rel=1e-9)
    assert out.losses.item() == pytest.approx(1.0238183, abs=1e-6)


def test_sft_hand_derived():
    """Summed log-prob -6 over 3 tokens: NLL per token 2."""
    out = get_loss("sft").fn(
        torch.tensor([-6.0]),
        torch.tensor([-1.0]),
        None,
        None,
        LossParams(),
        {"chosen_tokens": torch.tensor([3.0])},
    )
    assert out.losses.item() == pytest.approx(2.0)


def test_kto_hand_derived():
    """Two rows, both with r = log π - log π_ref = 0.5; labels (desirable, undesirable), β = 0.1.
    KL rows' log-ratios (0.5, -0.5): mean 0 -> z0 = 0: losses 1 - σ(0.05), 1 - σ(-0.05).
    KL rows' log-ratios (1.5, 0.5): z0 = 1: losses 1 - σ(-0.05), 1 - σ(0.05).
    KL rows' log-ratios (-1, -2): the mean is negative, clamped: z0 = 0."""
    spec = get_loss("kto")
    assert spec.unpaired
    c, ref_c = torch.tensor([-1.0, -1.0]), torch.tensor([-1.5, -1.5])
    labels = {"label": torch.tensor([1.0, 0.0])}
    p = LossParams(beta=0.1)
    ref_kl = torch.tensor([-2.5, -2.5])
    out = spec.fn(c, torch.tensor([-2.0, -3.0]), ref_c, ref_kl, p, labels)
    torch.testing.assert_close(out.losses, torch.tensor([1 - sigmoid(0.05), 1 - sigmoid(-0.05)]))
    out = spec.fn(c, torch.tensor([-1.0, -2.0]), ref_c, ref_kl, p, labels)
    torch.testing.assert_close(out.losses, torch.tensor([1 - sigmoid(-0.05), 1 - sigmoid(0.05)]))
    out = spec.fn(c, torch.tensor([-3.5, -4.5]), ref_c, ref_kl, p, labels)
    torch.testing.assert_close(out.losses, torch.tensor([1 - sigmoid(0.05), 1 - sigmoid(-0.05)]))
    weighted = spec.fn(
        c,
        torch.tensor([-2.0, -3.0]),
        ref_c,
        ref_kl,
        LossParams(beta=0.1, kto_desirable_weight=2.0, kto_undesirable_weight=0.5),
        labels,
    )
    torch.testing.assert_close(
        weighted.losses, torch.tensor([2 * (1 - sigmoid(0.05)), 0.5 * (1 - sigmoid(-0.05))])
    )


def test_apo_zero_unpaired_hand_derived():
    """r = 0.5 for both rows; labels (1, 0): 1 - σ(0.05) and σ(0.05)."""
    out = get_loss("apo_zero_unpaired").fn(
        torch.tensor([-1.0, -1.0]),
        torch.tensor([-9.0, -9.0]),
        torch.tensor([-1.5, -1.5]),
        torch.tensor([-9.0, -9.0]),
        LossParams(beta=0.1),
        {"label": torch.tensor([1.0, 0.0])},
    )
    torch.testing.assert_close(out.losses, torch.tensor([1 - sigmoid(0.05), sigmoid(0.05)]))


# --- modifiers ---------------------------------------------------------------------------


def _objective(names, weights=None, **modifiers):
    from dpokit.objectives import PreferenceObjective as Objective

    return Objective.from_names(names, weights, LossParams(beta=0.1), **modifiers)


def _logps(chosen=-1.0, rejected=-2.0, n_c=4, n_r=4):
    from dpokit.core import PairLogps

    return PairLogps(
        torch.tensor([chosen]), torch.tensor([rejected]), torch.tensor([n_c]), torch.tensor([n_r])
    )


def test_mixing_losses_with_weights():
    """sigmoid + 0.2·sft: softplus(-0.1) + 0.2·(1/4) = 0.694397 (RPO recipe)."""
    obj = _objective(["sigmoid", "sft"], [1.0, 0.2])
    out = obj.losses(_logps(), torch.tensor([-1.5]), torch.tensor([-1.5]), {})
    assert out.losses.item() == pytest.approx(softplus(-0.1) + 0.05, rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.05)  # rewards of the first loss
    with pytest.raises(ValueError, match="loss_weights has 1 values for 2 losses"):
        _objective(["sigmoid", "sft"], [1.0])
    with pytest.raises(ValueError, match="cannot mix paired and unpaired"):
        _objective(["sigmoid", "kto"])


@pytest.mark.parametrize("name", ["kto", "bco_pair"])
def test_batch_statistics_pooled_over_processes_equal_one_big_batch(name):
    """Two "processes" with 3 pairs each, their statistic pooled through ``reduce_sum``, give
    each pair the loss it has in one batch of 6; unpooled halves differ (so this can fail)."""
    from dpokit.core import PairLogps

    torch.manual_seed(0)
    c, r, rc, rr = (torch.randn(6) for _ in range(4))
    tokens = torch.full((6,), 3)
    extras = {"label": torch.tensor([1.0, 0, 1, 1, 0, 0])}
    whole = _objective([name]).losses(PairLogps(c, r, tokens, tokens), rc, rr, extras).losses
    values = get_loss(name).statistic.values
    halves = [slice(0, 3), slice(3, 6)]
    stats = [values(c[h], r[h], rc[h], rr[h], LossParams(beta=0.1)).double() for h in halves]
    pooled, alone = [], []
    for i, h in enumerate(halves):
        other = stats[1 - i]
        sums = torch.stack([other.new_tensor(other.numel()), other.sum(), other.pow(2).sum()])
        args = (PairLogps(c[h], r[h], tokens[h], tokens[h]), rc[h], rr[h],
                {"label": extras["label"][h]})
        alone.append(_objective([name]).losses(*args).losses)
        obj = _objective([name])
        obj.reduce_sum = lambda t, o=sums: t + o
        pooled.append(obj.losses(*args).losses)
    torch.testing.assert_close(torch.cat(pooled), whole, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(torch.cat(alone), whole, atol=1e-4)


@pytest.mark.parametrize(
    "kind,h",
    [
        ("reverse_kl", 1.0),
        ("forward_kl", 2 * math.sinh(0.5)),  # -e^{-0.5} + e^{0.5}
        ("js", 0.5),  # (0.5 - softplus(0.5)) - (-0.5 - softplus(-0.5)) = 1 - 0.5
        ("alpha", 4 * math.sinh(0.25)),  # α = 0.5: (e^{0.25} - e^{-0.25}) / 0.5
    ],
)
def test_f_divergence_transforms(kind, h):
    """u_w = 0.5, u_l = -0.5; DPO on f'(e^u): -log σ(β·(f'(u_w) - f'(u_l)))."""
    obj = _objective("sigmoid", f_divergence=kind, f_alpha=0.5)
    out = obj.losses(_logps(), torch.tensor([-1.5]), torch.tensor([-1.5]), {})
    assert out.losses.item() == pytest.approx(softplus(-0.1 * h), rel=1e-6)


def test_wpo_weights_pairs_by_policy_probability():
    """Mean log-probs -1/4 and -2/4: weight e^{-0.75}; loss softplus(-0.1)·e^{-0.75}."""
    obj = _objective("sigmoid", wpo="mean")
    out = obj.losses(_logps(), torch.tensor([-1.5]), torch.tensor([-1.5]), {})
    assert out.losses.item() == pytest.approx(softplus(-0.1) * math.exp(-0.75), rel=1e-6)
    chosen = torch.tensor([-1.0], requires_grad=True)
    from dpokit.core import PairLogps

    logps = PairLogps(chosen, torch.tensor([-2.0]), torch.tensor([4]), torch.tensor([4]))
    obj.losses(logps, torch.tensor([-1.5]), torch.tensor([-1.5]), {}).losses.sum().backward()
    # the weight is detached: the gradient is the weighted DPO gradient
    assert chosen.grad.item() == pytest.approx(-0.1 * sigmoid(-0.1) * math.exp(-0.75), rel=1e-6)


def test_wpo_paper_form_subtracts_the_sampling_norm():
    """WPO Eq. 2: each token's log-prob minus log sum_v p(v)^2. Summed norms -2 (chosen, 4
    tokens) and -1 (rejected, 4 tokens): adjusted means -1/4 + 2/4 and -2/4 + 1/4, so the
    weight is e^{0.25 - 0.25} = 1; without the norms it would be e^{-0.75}."""
    obj = _objective("sigmoid", wpo="paper")
    logps = _logps()
    logps.chosen_norm, logps.rejected_norm = torch.tensor([-2.0]), torch.tensor([-1.0])
    out = obj.losses(logps, torch.tensor([-1.5]), torch.tensor([-1.5]), {})
    assert out.losses.item() == pytest.approx(softplus(-0.1), rel=1e-6)
    with pytest.raises(ValueError, match="wpo=paper needs"):
        obj.losses(_logps(), torch.tensor([-1.5]), torch.tensor([-1.5]), {})


def readme_loss_rows() -> list[str]:
    """The loss table of docs/losses.md, row by row, as the registry declares it."""
    from dpokit.losses import loss_needs

    specs = {spec.name: spec for spec in available_losses().values()}
    rows = []
    for name in sorted(specs):
        spec = specs[name]
        label = f"`{name}`" + "".join(f" (`{a}`)" for a in spec.aliases)
        params = ", ".join(f"`{p.name}`={p.default:g}" for p in spec.params)
        rows.append(f"| {label} | {spec.formula} | {spec.paper} | {loss_needs(spec)} | {params} |")
    return rows


def test_readme_table_is_the_registry():
    """Each row of the loss table (docs/losses.md) is what the registry declares (name, formula,
    paper, needs, hyper-parameters with defaults); regenerate it with readme_loss_rows()."""

    readme = (REPO / "docs" / "losses.md").read_text()
    for row in readme_loss_rows():
        assert row in readme, f"docs/losses.md's loss table lacks or differs from:\n{row}"
    assert len(readme_loss_rows()) == len({s.name for s in available_losses().values()})


def test_gravity_weighted_schedules_by_hand():
    from dpokit.losses.gravity import gap_and_privilege, register_gravity_schedule

    gap, privilege = gap_and_privilege(torch.tensor([0.0, 1.0, 2.0]),
                                       torch.tensor([4.0, 2.0, 2.0]), levels=5)
    assert gap.tolist() == [1.0, 0.25, 0.0] and privilege.tolist() == [0.0, 0.5, 0.5]
    chosen, rejected = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-2.0, -2.5, -1.0])
    ref = torch.zeros(3)
    extras = {"level_obeyed": torch.tensor([0.0, 1.0, 2.0]),
              "level_overridden": torch.tensor([4.0, 2.0, 2.0])}
    params = LossParams(beta=0.5, gw_offset=2.0, gw_weight=1.0, gw_eta=1.0)
    h = torch.tensor([1.0, 0.5, -2.0])
    for name, s in (("gw_linear", [1.0, 0.25, 0.0]), ("gw_bilateral", [1.0, 0.375, 0.0])):
        s = torch.tensor(s)
        by_hand = -(1 + s) * torch.nn.functional.logsigmoid(0.5 * h - 2.0 * s)
        out = get_loss(name).fn(chosen, rejected, ref, ref, params, extras)
        torch.testing.assert_close(out.losses, by_hand)
    # no gap (benign / aligned rows): exactly DPO's loss
    dpo = get_loss("sigmoid").fn(chosen, rejected, ref, ref, params, extras)
    assert out.losses[2].item() == pytest.approx(dpo.losses[2].item())
    with pytest.raises(ValueError, match="obeyed <= overridden"):
        gap_and_privilege(torch.tensor([3.0]), torch.tensor([1.0]), levels=5)
    register_gravity_schedule("squared", lambda g, p, params: g**2, "s = g²")
    out = get_loss("gw_squared").fn(chosen, rejected, ref, ref, params, extras)
    s = torch.tensor([1.0, 0.0625, 0.0])
    torch.testing.assert_close(out.losses, -(1 + s) * torch.nn.functional.logsigmoid(
        0.5 * h - 2.0 * s))
    from dpokit.losses.registry import _REGISTRY

    _REGISTRY.pop("gw_squared")  # (the README table is the registry)


@pytest.mark.parametrize("name", ["gw_linear", "gw_bilateral"])
def test_gravity_losses_read_the_reference_of_each_answer(name):
    """h uses each answer's own reference log-prob: with ref_chosen != ref_rejected a loss
    that dropped the reference (or swapped the two) gives another value."""
    extras = {"level_obeyed": torch.tensor([0.0, 1.0]), "level_overridden": torch.tensor([4.0,
                                                                                        2.0])}
    params = LossParams(beta=0.5, gw_offset=2.0, gw_weight=1.0, gw_eta=1.0)
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.5])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -1.0]), torch.tensor([-3.0, -1.5])
    h = (chosen - ref_chosen) - (rejected - ref_rejected)  # [-1.0, -2.0]
    s = torch.tensor([1.0, 0.25]) if name == "gw_linear" else torch.tensor([1.0, 0.375])
    out = get_loss(name).fn(chosen, rejected, ref_chosen, ref_rejected, params, extras)
    torch.testing.assert_close(out.losses, -(1 + s) * torch.nn.functional.logsigmoid(
        0.5 * h - 2.0 * s))
    no_reference = get_loss(name).fn(chosen, rejected, torch.zeros(2), torch.zeros(2), params,
                                     extras)
    swapped = get_loss(name).fn(chosen, rejected, ref_rejected, ref_chosen, params, extras)
    assert not torch.allclose(out.losses, no_reference.losses)
    assert not torch.allclose(out.losses, swapped.losses)


def test_accuracies_count_a_tie_as_half_and_keep_trls_strict_count():
    """Hand-derived: rewards (chosen, rejected) = (1, 0) right, (0, 0) tie, (0, 2) wrong,
    (3, 3) tie: accuracy (1 + 1/2 + 0 + 1/2) / 4 = 1/2; TRL's strict count 1/4."""
    from dpokit.core import PairLogps
    from dpokit.losses import LossOutput
    from dpokit.objectives.preference import pair_metrics

    c, r = torch.tensor([1.0, 0.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 2.0, 3.0])
    logps = PairLogps(torch.tensor([-1.0, -2.0, -3.0, -4.0]),
                      torch.tensor([-1.0, -3.0, -1.0, -5.0]), torch.ones(4), torch.ones(4))
    means = pair_metrics(LossOutput(torch.zeros(4), c, r), logps).means()
    assert means["rewards/accuracies"] == 0.5 and means["rewards/accuracies_strict"] == 0.25
    assert means["logp_accuracy"] == (0.5 + 1 + 0 + 1) / 4
