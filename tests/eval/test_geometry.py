"""Embedding geometry: both TDIs on cases with known answers, the shipped probe set, the
monitor's warning, the style regularizer in the loop, and the figures in metrics.jsonl."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import REPO, make_tiny_llama, write_jsonl
from helpers import lora_model, tiny_trainer

from dpokit.cli import main
from dpokit.config import ConfigError, load_config
from dpokit.data.io import DataError
from dpokit.eval import tdi
from dpokit.eval.style_regularizer import MatchedNoise, StyleRegularizer
from dpokit.eval.tdi import (
    Geometry,
    GeometryMonitor,
    GeometrySettings,
    StyleProbes,
    layout_tdi,
    load_probes,
    measure_geometry,
    relative_noise,
    trajectory_tdi,
)
from dpokit.policies.causal_lm.hidden import hidden_states, input_embeddings

DATA = REPO / "data"


class _Holder:  # the part of a policy the geometry code reads
    def __init__(self, model):
        self.model = model


def test_layout_tdi_by_hand():
    # two classes on the unit circle: within-class distance sqrt2, centroids sqrt2 apart
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert layout_tdi(x, ["a", "a", "b", "b"]).item() == pytest.approx(1.0)
    # squared form: within 2, centroids (0.5,0.5) and (-0.5,-0.5): squared distance 2
    assert layout_tdi(x, ["a", "a", "b", "b"], squared=True).item() == pytest.approx(1.0)
    # scale within a class does not matter (rows are L2-normalized)
    assert layout_tdi(x * torch.tensor([[3.0], [1.0], [2.0], [5.0]]),
                      [0, 0, 1, 1]).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more classes"):
        layout_tdi(x, [0, 0, 0, 0])


def test_layout_tdi_within_term_is_the_root_mean_square_distance_on_a_three_point_class():
    # class a: three points on the unit circle, pairwise distances sqrt2, 2, sqrt2: the
    # official within term is sqrt((2 + 4 + 2) / 3) = sqrt(8/3) (the mean distance would be
    # (2 sqrt2 + 2) / 3); class b: one point twice (within 0); centroids (0, 1/3), (0, -1)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, -1.0]])
    labels = ["a", "a", "a", "b", "b"]
    expected = (8 / 3) ** 0.5 / 2 / (4 / 3)
    assert layout_tdi(x, labels).item() == pytest.approx(expected, rel=1e-6)
    assert layout_tdi(x, labels).item() != pytest.approx((2 * 2 ** 0.5 + 2) / 3 / 2 / (4 / 3),
                                                          rel=1e-3)


def test_layout_tdi_of_a_map_that_ignores_style_is_zero_and_grows_with_style():
    gen = torch.Generator().manual_seed(0)
    contents = torch.randn(10, 16, generator=gen)
    styles = torch.randn(4, 16, generator=gen)
    labels = [c for c in range(10) for _ in range(4)]
    ignores_style = torch.stack([contents[c] for c in labels])  # (40, 16)
    assert layout_tdi(ignores_style, labels).item() == pytest.approx(0.0, abs=1e-6)
    figures = [layout_tdi(torch.stack([contents[c] + w * styles[i % 4]
                                       for i, c in enumerate(labels)]), labels).item()
               for w in (0.1, 0.5, 2.0)]
    assert 0 < figures[0] < figures[1] < figures[2]


def test_trajectory_tdi_by_hand_and_the_identity_map_scores_sigma_squared():
    c = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    # (0.5^2 + 0) / (25 + 25) per layer; two identical layers average to the same
    moved = c + torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    assert trajectory_tdi([c, c], [moved, moved]) == pytest.approx(0.25 / 50)
    x = torch.randn(4, 50, 64, generator=torch.Generator().manual_seed(1)) * 3.0
    for sigma in (0.01, 0.1):
        noise = relative_noise(sigma, torch.Generator().manual_seed(2))
        identity = trajectory_tdi([x.reshape(-1, 64)], [(x + noise(x)).reshape(-1, 64)])
        assert identity == pytest.approx(sigma**2, rel=0.05)


def test_shipped_probe_sets_load_and_keep_their_contents_apart():
    train, held = (load_probes(str(DATA / f"style_probes.{s}.jsonl")) for s in ("train", "eval"))
    assert len(train.content_names()) >= 30 and len(held.content_names()) >= 30
    assert not set(train.contents) & set(held.contents)
    for probes in (train, held):
        styles = set(probes.styles)
        assert {"original", "lowercase", "uppercase", "formal", "casual"} <= styles
        assert any(s.startswith("hand_") for s in styles)  # hand-written variants too


def test_bad_probe_rows_are_named(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"content": "a", "style": "x", "text": "Hi."},
                                             {"content": "a", "style": "y"}])
    with pytest.raises(DataError, match=r"row 2, field 'text'"):
        load_probes(str(path))
    alone = write_jsonl(tmp_path / "q.jsonl", [
        {"content": "a", "style": "x", "text": "Hi."}, {"content": "a", "style": "y", "text": "hi"},
        {"content": "b", "style": "x", "text": "Bye."}])
    with pytest.raises(DataError, match="one style only"):
        load_probes(str(alone))


def test_measure_geometry_on_a_tiny_model(tokenizer):
    probes = load_probes(str(DATA / "style_probes.eval.jsonl")).subset(
        load_probes(str(DATA / "style_probes.eval.jsonl")).content_names()[:8])
    model = make_tiny_llama(len(tokenizer)).eval()
    settings = GeometrySettings(sigma=0.1, batch_size=7)
    first = measure_geometry(model, tokenizer, probes, settings)
    assert first.trajectory_per_layer[0] == pytest.approx(0.01, rel=0.1)  # the input: identity
    assert len(first.trajectory_per_layer) == 3  # embeddings + 2 decoder layers
    assert first.style_tdi > 0 and first.trajectory_tdi > 0
    again = measure_geometry(model, tokenizer, probes, settings)  # seeded: same perturbations
    assert again.style_tdi == pytest.approx(first.style_tdi, rel=1e-5)
    assert again.trajectory_tdi == pytest.approx(first.trajectory_tdi, rel=1e-5)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(5.0)
    assert measure_geometry(model, tokenizer, probes, settings).style_tdi != pytest.approx(
        first.style_tdi, rel=1e-3)


def test_monitor_warns_when_style_tdi_rises_past_the_threshold(monkeypatch):
    values = iter([Geometry(0.50, 0.02, []), Geometry(0.55, 0.02, []), Geometry(0.70, 0.03, [])])
    monkeypatch.setattr(tdi, "measure_geometry", lambda *a: next(values))
    logged = []
    probes = StyleProbes(["a", "A"], ["c", "c"], ["x", "y"])
    monitor = GeometryMonitor(probes, None, GeometrySettings(), 0.2, logged.append)
    assert monitor(_Holder(None))["eval/geometry/style_tdi_change"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor(_Holder(None))["eval/geometry/style_tdi_change"] == pytest.approx(0.1)
    with pytest.warns(UserWarning, match=r"Style TDI rose \+40.0%"):
        figures = monitor(_Holder(None))
    assert figures["eval/geometry/style_tdi"] == 0.70
    assert figures["eval/geometry/trajectory_tdi_change"] == pytest.approx(0.5)
    assert logged and "geometry.warn_increase=20%" in logged[0]


def test_finite_difference_regularizer_is_the_squared_style_tdi_of_the_steps_probes(tokenizer):
    probes = load_probes(str(DATA / "style_probes.train.jsonl"))
    model = lora_model(make_tiny_llama(len(tokenizer)))
    reg = StyleRegularizer(probes, tokenizer, "finite_difference", 1.0, 3, GeometrySettings())
    batch, contents = reg._batch(step=5)
    assert len(set(contents)) == 3 and reg._batch(step=5)[1] == contents  # seeded by step
    assert reg._batch(step=6)[1] != contents
    value = reg(_Holder(model), 5).value
    states = hidden_states(model, batch)
    by_hand = layout_tdi(tdi.mean_pool(states.layers[-1], batch.attention_mask), contents,
                         squared=True)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    value.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_input_matched_regularizer_noise_has_the_input_style_covariance(tokenizer):
    probes = StyleProbes(["the cat sat", "THE CAT SAT", "a dog ran", "A DOG RAN!"],
                         ["c", "c", "d", "d"], ["o", "u", "o", "u"])
    model = make_tiny_llama(len(tokenizer))
    reg = StyleRegularizer(probes, tokenizer, "input_matched", 1.0, 2, GeometrySettings())
    factor = reg.style_covariance_factor(model, "cpu")  # (4, H)
    texts = reg.texts
    pooled = tdi.mean_pool(input_embeddings(model, texts).float(), texts.attention_mask)
    deltas = torch.stack([pooled[0] - pooled[:2].mean(0), pooled[1] - pooled[:2].mean(0),
                          pooled[2] - pooled[2:].mean(0), pooled[3] - pooled[2:].mean(0)])
    torch.testing.assert_close(factor.T @ factor, deltas.T @ deltas / 4)
    value = reg(_Holder(model), 0).value
    assert value.item() > 0 and value.requires_grad


def _probes_with_styles():
    texts = [("c", "the cat sat on the mat"), ("c", "THE CAT SAT ON THE MAT"),
             ("c", "the cat, it sat on the mat!"), ("d", "a dog ran in the park"),
             ("d", "A DOG RAN IN THE PARK"), ("d", "a dog, it ran in the park!"),
             ("e", "rain fell all day"), ("e", "RAIN FELL ALL DAY"), ("e", "rain, it fell!")]
    return StyleProbes([t for _, t in texts], [c for c, _ in texts],
                       ["plain", "upper", "spoken"] * 3)


def test_matched_regularizer_is_the_papers_form(tokenizer):
    """Sigma from the hidden-state deltas at the noise layer, truncated to its top components
    and shrunk toward isotropic at equal trace; the noise enters after that layer (the
    layers before it do not move), and the penalty is the later layers' response."""
    model = make_tiny_llama(len(tokenizer))
    probes = _probes_with_styles()
    reg = StyleRegularizer(probes, tokenizer, "matched", 0.7, 3, GeometrySettings(),
                           cap_ratio=0.3, noise=MatchedNoise(layer=1, rank=2, shrinkage=0.1))
    assert reg.noise_layer(model) == 1
    factor = reg.style_covariance_factor(model, "cpu", 1)  # (9, H): hidden-state deltas
    texts = reg.texts
    pooled = tdi.mean_pool(hidden_states(model, texts).layers[1].float(),
                           texts.attention_mask)
    cls = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    means = torch.stack([pooled[cls == k].mean(0) for k in range(3)])
    deltas = pooled - means[cls]
    sigma = deltas.T @ deltas / 9
    torch.testing.assert_close(factor.T @ factor, sigma, atol=1e-6, rtol=1e-4)
    top = reg.truncated_factor(factor)  # (2, H)
    values, vectors = torch.linalg.eigh(sigma)
    best = vectors[:, -2:] @ torch.diag(values[-2:]) @ vectors[:, -2:].T  # rank-2 part
    torch.testing.assert_close(top.T @ top, best, atol=1e-6, rtol=1e-4)
    # the noise: covariance 0.9 Sigma_2 + 0.1 tr(Sigma_2) / H I (sampled, many tokens)
    noise = reg._noise(model, "cpu", torch.Generator().manual_seed(0), 1)
    z = noise(torch.zeros(400, 50, sigma.shape[0])).flatten(0, 1)  # (20000, H)
    expected = 0.9 * best + 0.1 * torch.trace(best) / sigma.shape[0] * torch.eye(len(best))
    torch.testing.assert_close(z.T @ z / len(z), expected, atol=0.05 * float(expected.abs().max()),
                               rtol=0)
    # where it enters: after decoder layer 1; the penalty reads the layers after it
    batch, _ = reg._batch(0)
    clean = hidden_states(model, batch)
    noisy = hidden_states(model, batch, noise, at_layer=1)
    assert torch.equal(clean.layers[0], noisy.layers[0])
    assert not torch.allclose(clean.layers[-1], noisy.layers[-1])
    value = reg(_Holder(model), 0).value
    assert value.item() > 0 and value.requires_grad
    estimated = reg._factor.clone()  # once, as the paper's estimate before training
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    reg(_Holder(model), 1)
    assert torch.equal(reg._factor, estimated)
    with pytest.raises(ValueError, match="regularizer_layer must be in"):
        StyleRegularizer(probes, tokenizer, "matched", 1.0, 2, GeometrySettings(),
                         noise=MatchedNoise(layer=5)).noise_layer(model)


def test_a_capped_regularizer_never_adds_more_than_its_share_of_the_task_loss(tmp_path,
                                                                            tokenizer):
    probes = load_probes(str(DATA / "style_probes.train.jsonl"))
    reg = StyleRegularizer(probes, tokenizer, "finite_difference", 1e6, 3,
                           GeometrySettings(seed=3), cap_ratio=0.3)
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=2, learning_rate=1e-3)
    trainer.regularizers = [reg]
    before = {n: p.detach().clone() for n, p in trainer.policy.named_trainable_parameters().items()}
    history = trainer.train().history
    assert all(row["reg/style_capped"] == 1.0 for row in history)  # weight 1e6: always capped
    # capped, the penalty carries no gradient: the update is DPO's alone, as without it
    plain = tiny_trainer(tmp_path / "plain", tokenizer, max_steps=2, learning_rate=1e-3)
    plain_before = {n: p.detach().clone()
                    for n, p in plain.policy.named_trainable_parameters().items()}
    plain.train()
    for name, p in trainer.policy.named_trainable_parameters().items():
        torch.testing.assert_close(p - before[name],
                                   plain.policy.named_trainable_parameters()[name]
                                   - plain_before[name])


def test_style_regularizer_in_the_loop_lowers_its_penalty_and_is_logged(tmp_path, tokenizer):
    probes = load_probes(str(DATA / "style_probes.train.jsonl"))
    reg = StyleRegularizer(probes, tokenizer, "finite_difference", 5.0, 12,
                           GeometrySettings(seed=3))
    reg._batch = lambda step, whole=reg._batch: whole(0)  # the same probes every step
    trainer = tiny_trainer(tmp_path, tokenizer, max_steps=12, learning_rate=3e-2)
    trainer.regularizers = [reg]
    history = trainer.train().history
    penalties = [row["reg/style"] for row in history]
    assert penalties[-1] < 0.8 * penalties[0]
    plain = tiny_trainer(tmp_path / "plain", tokenizer, max_steps=12, learning_rate=3e-2)
    assert "reg/style" not in plain.train().history[-1]
    with torch.no_grad():  # the same penalty on the model trained without it: higher
        assert reg(plain.policy, 0).value.item() > 1.2 * reg(trainer.policy, 0).value.item()


def test_geometry_config_is_checked():
    with pytest.raises(ConfigError, match="regularizer_probes"):
        load_config(None, **{"geometry.regularizer": "matched"})
    with pytest.raises(ConfigError, match="regularizer_contents"):
        load_config(None, **{"geometry.regularizer_contents": 1})
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(None, **{"online.mode": "online"})


def test_train_cli_logs_geometry_at_each_evaluation(tmp_path, tiny_model_dir):
    from conftest import sentiment_rows

    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows())
    out = tmp_path / "run"
    code = main(["train", f"model.name={tiny_model_dir}", "model.lora=false",
                 f"train_data={train}", "max_steps=4", "batch_size=2", "eval_every=2",
                 "learning_rate=1e-2", f"output_dir={out}", "progress_bar=false", "log_with=[]",
                 "max_length=64", "max_prompt_length=32",
                 f"geometry.probes={DATA / 'style_probes.eval.jsonl'}",
                 "geometry.regularizer=finite_difference", "geometry.regularizer_weight=0.5",
                 f"geometry.regularizer_probes={DATA / 'style_probes.train.jsonl'}"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/geometry/style_tdi" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert evals[0]["eval/geometry/style_tdi_change"] == 0.0
    assert all("reg/style" in r for r in rows if "loss" in r)


def test_eval_cli_gives_geometry_of_the_model_and_its_reference(tmp_path, tiny_model_dir,
                                                                 capsys):
    probes = write_jsonl(tmp_path / "probes.jsonl", [
        {"content": c, "style": s, "text": t} for c, s, t in [
            ("a", "o", "the cat sat on the mat."), ("a", "u", "THE CAT SAT ON THE MAT"),
            ("b", "o", "paris is the capital of france."), ("b", "u", "PARIS IS THE CAPITAL")]])
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--probes",
                 str(probes), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    # the same weights as the reference: the same geometry, change 0
    assert figures["eval/geometry/style_tdi"] == pytest.approx(
        figures["eval/geometry/reference_style_tdi"], rel=1e-5)
    assert figures["eval/geometry/style_tdi_change"] == pytest.approx(0.0, abs=1e-5)
    assert "Style TDI" in capsys.readouterr().out


def test_report_plots_the_tdi_trajectory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [
        *({"step": s, "loss": 0.7, "reg/style": 1.0 / s} for s in (1, 2)),
        *({"step": s, "eval/loss": 0.6, "eval/geometry/style_tdi": 0.9 + s,
           "eval/geometry/trajectory_tdi": 1e-4} for s in (0, 2))])
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'alt="held out: Style TDI (embedding layout, lower is better)"' in page
    assert 'alt="held out: trajectory TDI"' in page
    assert 'alt="training: regularizer penalty"' in page and 'alt="training: loss"' in page
