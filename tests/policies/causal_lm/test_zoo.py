"""Every causal-LM family of transformers, every layout, every CPU backend: exact against each
sequence alone through the model's own eager forward (values and gradients, fp32), or refused
by name (one line: LayoutRefused / UnsupportedAttention); never a crash, and ``padded`` exact for
every family that loads. The zoo (``zoo.py``) builds each family tiny, its own features on.

A family per cause runs by default (``REPRESENTATIVE``), the whole zoo under ``-m slow``.
Tolerance: values 1e-4 absolute (sums of ~10 fp32 log-probs; the zoo's eager and SDPA paths agree
to 1e-5), gradients 1e-5 + 1e-4 x the tensor's largest gradient (zoo_reference's: the Gemma 3n /
4 families' gradients reach ~70, where fp32 eager alone is 2e-3 off float64).

The table of ``docs/families.md`` is generated here, from the same rules and models:
``DPOKIT_WRITE_TABLE=1 pytest tests/policies/causal_lm/test_zoo.py -k table`` rewrites it.
"""

import os
import re
from pathlib import Path

import pytest
import torch
import zoo
from test_attention import reference_varlen

from dpokit.data.text import collate_pairs
from dpokit.policies.causal_lm import CausalLMPolicy, kernels
from dpokit.policies.causal_lm.attention import UnsupportedAttention
from dpokit.policies.causal_lm.families import LayoutRefused

CASES = [("padded", "mask"), ("packed", "sdpa_segments"), ("prefix_shared", "sdpa_segments"),
         ("packed", "mask"), ("prefix_shared", "mask"), ("prefix_shared", "flash_varlen")]
# one family per cause of issue 39, and the plain ones
REPRESENTATIVE = ["llama", "mistral", "qwen2_sliding", "gemma2", "gemma3_text", "gpt_oss",
                  "falcon", "falcon_alibi", "stablelm", "bloom", "mpt", "mamba", "jamba",
                  "qwen3_next", "granite", "falcon_h1", "recurrent_gemma", "llama4_text",
                  "mixtral", "bert", "hyperclovax", "deepseek_v32"]
REFUSALS = (LayoutRefused, UnsupportedAttention)
DOCS = Path(__file__).resolve().parents[3] / "docs" / "families.md"


def loaded(name: str):
    """The entry as dpokit's loader would have it (``attn_implementation: auto``: SDPA where
    the family supports it, else eager)."""
    sdpa = zoo.model_class(name)._supports_sdpa
    return zoo.build(name, attn_implementation="sdpa" if sdpa else "eager")


def scored(model, layout: str, impl: str, grads: bool = True):
    model.zero_grad(set_to_none=True)
    batch = collate_pairs(zoo.PAIRS, 0, layout)
    with torch.set_grad_enabled(grads):
        out = CausalLMPolicy(model, attention_impl=impl, chunk_size=5).logps(batch)
    values = torch.cat([out.pairs().chosen, out.pairs().rejected])  # (2B,)
    if not grads:
        return values, {}
    (values * torch.linspace(0.5, 1.5, values.shape[0])).sum().backward()
    return values.detach(), {n: p.grad if p.grad is not None else torch.zeros_like(p)
                             for n, p in model.named_parameters()}


def check(name: str, monkeypatch) -> dict[tuple[str, str], str]:
    """Each case's outcome: 'exact' or the refusal's message; a wrong value is a failure."""
    monkeypatch.setattr(kernels, "varlen_kernel", lambda: reference_varlen)
    reference = zoo.reference_logps(zoo.build(name))
    outcomes = {}
    for layout, impl in CASES:
        try:
            values, grads = scored(loaded(name), layout, impl)
        except REFUSALS as refused:
            assert layout != "padded", f"{name}: padded refused: {refused}"
            assert "\n" not in str(refused)
            outcomes[layout, impl] = str(refused)
            continue
        torch.testing.assert_close(values, reference[0], atol=1e-4, rtol=0,
                                   msg=lambda m, c=(layout, impl): f"{name} {c}: {m}")
        for pname, grad in reference[1].items():
            torch.testing.assert_close(
                grads[pname], grad, rtol=1e-4, atol=1e-5 + 1e-4 * grad.abs().max().item(),
                msg=lambda m, c=(layout, impl), p=pname: f"{name} {c} grad {p}: {m}")
        outcomes[layout, impl] = "exact"
    return outcomes


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_a_family_per_cause_is_exact_or_refused_by_name(name, monkeypatch):
    outcomes = check(name, monkeypatch)
    assert outcomes["padded", "mask"] == "exact"


def test_the_representatives_cover_each_cause(monkeypatch):
    """The default selection exercises each way a family can go wrong: exact fast layouts with
    windows, soft-caps and sinks, and each refusal (state, no attention interface, row
    positions, an unknown head)."""
    assert set(REPRESENTATIVE) <= set(zoo.ZOO)
    reasons = " ".join(row for name in REPRESENTATIVE for row in table_row(name))
    for cause in ("carry state across tokens", "outside transformers' attention interface",
                  "reads positions in the row", "its head does more", "picks its keys"):
        assert cause in reasons, cause


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_family_is_exact_or_refused_by_name(name, monkeypatch):
    check(name, monkeypatch)


def table_row(name: str) -> list[str]:
    """The family's row: padded, packed, prefix_shared under the CPU backend (exact, or why
    not), and whether gpt-oss-style sinks keep it off flex / flash_varlen; what the rules say
    and a planned forward confirms (its values are the sweep's to check)."""
    model = loaded(name)
    cells = []
    for layout in ("padded", "packed", "prefix_shared"):
        try:
            with torch.no_grad():
                CausalLMPolicy(model, attention_impl="sdpa_segments").logps(
                    collate_pairs(zoo.PAIRS, 0, layout))
            cells.append("exact")
        except REFUSALS as refused:
            reason = re.sub(r"^.*?(cannot be exact for [\w-]+: |: )", "", str(refused), count=1)
            cells.append("refused: " + reason.split("; use batch_layout")[0])
    return cells


def render_table() -> str:
    lines = ["| family | padded | packed | prefix_shared |", "|---|---|---|---|"]
    for name in sorted(zoo.ZOO):
        lines.append(f"| {name} | " + " | ".join(table_row(name)) + " |")
    lines += ["", "Not built tiny in-process (so not in the sweep): " + "; ".join(
        f"{name} ({why})" for name, why in sorted(zoo.UNBUILDABLE.items())) + "."]
    return "\n".join(lines)


def test_the_documented_table_is_what_the_rules_say():
    text = DOCS.read_text()
    start, end = "<!-- families-table -->\n", "<!-- /families-table -->"
    table = render_table()
    if os.environ.get("DPOKIT_WRITE_TABLE"):
        head, rest = text.split(start)
        DOCS.write_text(head + start + table + "\n" + end + rest.split(end, 1)[1])
        text = DOCS.read_text()
    assert text.split(start)[1].split(end)[0].strip() == table.strip(), \
        "docs/families.md is stale: DPOKIT_WRITE_TABLE=1 pytest tests/policies/causal_lm/" \
        "test_zoo.py -k table"
