"""Token log-probs from hidden states without full-vocabulary logits for the whole batch.

The LM head runs only on the N positions that predict a completion token, ``chunk_size`` rows
at a time; the backward pass recomputes each chunk's logits instead of storing them, so peak
extra memory is ``chunk_size x V`` floats rather than ``N x V``. :func:`token_logps_plain` is the
plain twin (one full ``N x V`` matmul and ``log_softmax``); tests compare values and gradients.

    >>> h, w, t = torch.randn(5, 8), torch.randn(11, 8), torch.tensor([0, 3, 10, 2, 2])
    >>> torch.allclose(token_logps_chunked(h, w, t, chunk_size=2), token_logps_plain(h, w, t))
    True
"""

from __future__ import annotations

import math  # noqa: F401  (doctest)

import torch


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h @ W^T)[target], chunked over rows, with a recomputing backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, compute_dtype: torch.dtype,
                stats: torch.Tensor | None):
        # hidden: (N, H), weight: (V, H), targets: (N,) -> (N,) fp32 log-probs; ``stats``
        # (N, 2), when given, receives each position's entropy and argmax == target
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        w = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size].to(compute_dtype)  # (c, H)
            logits = (h @ w.T).float()  # (c, V), fp32 for the softmax
            picked = logits.gather(1, targets[start:start + chunk_size, None]).squeeze(1)  # (c,)
            lse = torch.logsumexp(logits, dim=-1)  # (c,)
            out[start:start + chunk_size] = picked - lse
            if stats is not None:
                stats[start:start + chunk_size] = token_stats(logits, lse,
                                                              targets[start:start + chunk_size])
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_size, ctx.compute_dtype = chunk_size, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(ctx.compute_dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            h = hidden[start:stop].to(ctx.compute_dtype)  # (c, H)
            g = grad_out[start:stop, None]  # (c, 1)
            # d logp[t] / d logits = onehot(t) - softmax(logits), made in place in one buffer
            grad_logits = torch.softmax((h @ w.T).float(), dim=-1).mul_(-g)  # (c, V)
            grad_logits.scatter_add_(1, targets[start:stop, None], g)
            if need_h:
                # (c, H)
                grad_h[start:stop] = (grad_logits.to(ctx.compute_dtype) @ w).to(hidden.dtype)
            if need_w:
                grad_w += grad_logits.T @ h.float()  # (V, H)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


@torch.no_grad()
def token_stats(logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(c, V) fp32 logits, (c,) their logsumexp, (c,) targets -> (c, 2): the entropy of each
    next-token distribution (nats) and whether its argmax is the target (what TRL logs as
    ``entropy`` and ``mean_token_accuracy``).

    >>> token_stats(torch.zeros(1, 4), torch.tensor([math.log(4)]), torch.tensor([0]))
    tensor([[1.3863, 1.0000]])
    """
    probs = torch.exp(logits - lse[:, None])  # (c, V)
    entropy = lse - torch.linalg.vecdot(probs, logits)  # (c,): one pass, no (c, V) product
    correct = (logits.argmax(-1) == targets).float()  # (c,)
    return torch.stack([entropy, correct], 1)


def token_logps_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 256,
    compute_dtype: torch.dtype | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, H) hidden, (V, H) head weight, (N,) targets -> (N,) fp32 log-probs of the targets.

    ``compute_dtype`` is the matmul precision (default: ``hidden``'s dtype); the log-softmax is
    always fp32. Runs outside autocast so the precision is exactly the one asked for. ``stats``
    (N, 2), when given, is filled with :func:`token_stats` (no gradient, no extra matmul).
    """
    compute_dtype = compute_dtype or hidden.dtype
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return _ChunkedTokenLogps.apply(hidden, weight, targets, chunk_size, compute_dtype,
                                        stats)


def token_logps_plain(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain twin: full (N, V) logits, fp32 ``log_softmax``, gather."""
    compute_dtype = compute_dtype or hidden.dtype
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = (hidden.to(compute_dtype) @ weight.to(compute_dtype).T).float()  # (N, V)
        if stats is not None:
            stats.copy_(token_stats(logits.detach(), torch.logsumexp(logits.detach(), -1),
                                    targets))
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # (N,)


def sum_per_sequence(
    token_logps: torch.Tensor, row_ids: torch.Tensor, num_rows: int
) -> torch.Tensor:
    """(N,) values with (N,) row ids -> (num_rows,) per-row sums."""
    out = torch.zeros(num_rows, dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, row_ids, token_logps)


@torch.no_grad()
def token_log_sum_sq_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    chunk_size: int = 256,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, H) hidden, (V, H) head weight -> (N,) fp32 log sum_v p(v)^2 of each position's
    next-token distribution (WPO's normalizer, Zhou et al. 2024, Eq. 2), without gradients:
    log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z), chunked like the head.

    >>> h, w = torch.zeros(1, 4), torch.randn(8, 4)   # uniform over 8: log(8 / 64)
    >>> round(token_log_sum_sq_probs(h, w).item(), 4) == round(math.log(1 / 8), 4)
    True
    """
    compute_dtype = compute_dtype or hidden.dtype
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        w = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk_size):
            logits = (hidden[start : start + chunk_size].to(compute_dtype) @ w.T).float()  # (c, V)
            out[start : start + chunk_size] = log_sum_sq_from_logits(logits)
    return out


def log_sum_sq_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(c, V) fp32 logits -> (c,) log sum_v softmax(logits)_v^2."""
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)
