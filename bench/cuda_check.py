"""Exactness on the accelerator: every fast path against its plain twin, on one device.

The CPU test suite proves packing, prefix sharing, every attention backend and the chunked LM
head exact on the CPU (tests/policies/causal_lm/: test_layouts.py, test_attention.py,
test_logprobs.py).
On a GPU the attention and matmul kernels differ (flash / memory-efficient SDPA, cuBLAS), so
this script re-checks the same claims there, on a tiny Llama built in-process, and trains a
few steps end to end:

    python bench/cuda_check.py                 # on the GPU machine; exits 1 on a mismatch
    python bench/cuda_check.py --device cpu    # the same checks here
                                               # (tests/bench/test_cuda_check.py)

Tolerances: fp32 (TF32 off), 1e-4 absolute on per-sequence log-probs and on parameter
gradients (relative 1e-3); under bf16 and fp16 autocast, the fast layouts and every attention
backend (mask, sdpa_segments; on CUDA flex, and flash_varlen where flash-attn is installed)
against the plain padded fp32 forward within 0.02 nats per token on average; training in the
precision auto picks, and in fp16 with the GradScaler on CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from dpokit.data.text import TokenizedPair, collate_pairs  # noqa: E402
from dpokit.policies.causal_lm import CausalLMPolicy  # noqa: E402
from dpokit.policies.causal_lm.logprobs import token_logps_chunked, token_logps_plain  # noqa: E402

# very different lengths: one-token prompt, long and one-token completions
PAIRS = [
    TokenizedPair(0, [5, 6, 7], [8, 9, 2], [10, 2]),
    TokenizedPair(1, [5], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 2], [22]),
    TokenizedPair(2, list(range(5, 45)), [15], [16, 17, 2]),
    TokenizedPair(3, [30, 31], list(range(32, 60)) + [2], [36, 37, 38, 39, 40, 41, 2]),
]
FP32_ATOL, GRAD_RTOL, BF16_PER_TOKEN = 1e-4, 1e-3, 0.02


def tiny_llama(device: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(device)


def logps_and_grads(device: str, layout: str, pairs, attention_impl: str = "mask",
                    dtype: torch.dtype | None = None):
    """Per-sequence log-probs (2B,), token counts (2B,) and parameter gradients of one layout
    and attention backend, under ``dtype`` autocast when given."""
    model = tiny_llama(device)
    batch = collate_pairs(pairs, 0, layout).to(device)
    policy = CausalLMPolicy(model, chunk_size=5, attention_impl=attention_impl)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = policy.logps(batch).pairs()
    values = torch.cat([out.chosen, out.rejected])  # (2B,)
    weights = torch.linspace(0.5, 1.5, values.shape[0], device=device)  # distinct upstream grads
    (values * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return values.detach(), torch.cat([out.chosen_tokens, out.rejected_tokens]), grads


def backends(device: str) -> list[str]:
    """The attention backends that train on ``device``: FlexAttention has no CPU backward,
    flash-attn's varlen kernel needs CUDA and the package."""
    from dpokit.policies.causal_lm.attention import flash_attn_available

    found = ["mask", "sdpa_segments"]
    if device == "cuda":
        found.append("flex")
        if flash_attn_available():
            found.append("flash_varlen")
    return found


def check_layouts(device: str, failures: list[str]) -> None:
    """Every backend and layout against the padded plain forward: fp32 values and gradients;
    bf16 and fp16 autocast within the reference-precision bound per token."""
    for n_pairs in (1, len(PAIRS)):
        pairs = PAIRS[:n_pairs]
        plain = logps_and_grads(device, "padded", pairs)
        for layout in ("packed", "prefix_shared"):
            for impl in backends(device):
                name = f"{layout} + {impl}, {n_pairs} pair(s)"
                fast = logps_and_grads(device, layout, pairs, impl)
                value_err = float((fast[0] - plain[0]).abs().max())
                grad_err = max(
                    float(((fast[2][k] - g).abs() - GRAD_RTOL * g.abs()).max())
                    for k, g in plain[2].items()
                )
                ok = (
                    value_err <= FP32_ATOL
                    and grad_err <= FP32_ATOL
                    and torch.equal(fast[1], plain[1])
                )
                report(
                    failures,
                    ok,
                    f"fp32 {name}: max |logp diff| {value_err:.2e}, grad excess {grad_err:.2e}",
                )
                for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                    low = logps_and_grads(device, layout, pairs, impl, dtype)
                    per_token = float(((low[0] - plain[0]).abs() / plain[1].clamp(min=1)).mean())
                    finite = bool(torch.isfinite(low[0]).all()) and all(
                        bool(torch.isfinite(g).all()) for g in low[2].values())
                    report(failures, per_token <= BF16_PER_TOKEN and finite,
                           f"{label} {name}: mean |logp diff| per token {per_token:.4f}")


def check_lm_head(device: str, failures: list[str]) -> None:
    torch.manual_seed(0)
    h = torch.randn(300, 64, device=device, requires_grad=True)
    w = (torch.randn(1000, 64, device=device) * 0.2).requires_grad_()
    t = torch.randint(0, 1000, (300,), device=device)
    upstream = torch.randn(300, device=device)
    a = token_logps_chunked(h, w, t, chunk_size=64)  # (300,)
    b = token_logps_plain(h, w, t)
    ga = torch.autograd.grad((a * upstream).sum(), (h, w))
    gb = torch.autograd.grad((b * upstream).sum(), (h, w))
    err = max(
        float((a - b).detach().abs().max()),
        *(float((x - y).abs().max()) for x, y in zip(ga, gb, strict=True)),
    )
    report(failures, err <= FP32_ATOL, f"fp32 chunked LM head vs plain: max diff {err:.2e}")
    with torch.no_grad():
        low = token_logps_chunked(h, w, t, chunk_size=64, compute_dtype=torch.bfloat16)  # (300,)
        err = float((low - b).abs().mean())
    report(
        failures,
        low.dtype == torch.float32 and err <= BF16_PER_TOKEN,
        f"bf16 chunked LM head vs fp32 plain: mean diff per token {err:.4f}",
    )


def check_training(device: str, failures: list[str], out_dir: Path,
                   precision: str = "auto") -> None:
    """A few DPO steps through the real Trainer (reference precomputed, prefix-shared) in
    ``precision`` (auto: what the device computes natively; fp16: with the GradScaler)."""
    from conftest import make_tokenizer, sentiment_rows
    from helpers import tiny_trainer

    tok = make_tokenizer()
    trainer = tiny_trainer(
        out_dir,
        tok,
        rows=sentiment_rows(),
        max_steps=8,
        learning_rate=5e-3,
        mixed_precision=precision,
        precompute_ref_logps=True,
        ref_cache_dir=None,
    )
    history = trainer.train().history
    losses = [m["loss"] for m in history]
    on_device = trainer.accelerator.device.type == device
    ok = on_device and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    report(
        failures,
        ok,
        f"training on {trainer.accelerator.device} in {trainer.precision}: "
        f"loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f}, reward accuracy {history[-1]['rewards/accuracies']:.2f}",
    )


def report(failures: list[str], ok: bool, line: str) -> None:
    print(("ok    " if ok else "FAIL  ") + line, flush=True)
    if not ok:
        failures.append(line)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # compiled FlexAttention recompiles per autocast dtype and grad mode: this script runs all
    # of them (a training run one or two), past dynamo's default limit of 8, after which flex
    # falls back to its unfused eager form (still exact; seen on an H200, 2026-12-04)
    torch._dynamo.config.recompile_limit = 64
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    failures: list[str] = []
    check_layouts(args.device, failures)
    check_lm_head(args.device, failures)
    for precision in ("auto", "fp16") if args.device == "cuda" else ("auto",):
        with tempfile.TemporaryDirectory() as out_dir:
            check_training(args.device, failures, Path(out_dir), precision)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
