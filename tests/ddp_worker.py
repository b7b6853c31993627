"""Run by test_distributed.py: a few training steps in 1 or 2 processes (gloo, CPU), with the
strategy and any config given as JSON (resume, checkpoints, FSDP2, the precision)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from conftest import make_tiny_llama, make_tokenizer, sentiment_rows, unpaired_rows  # noqa: E402
from helpers import tiny_trainer  # noqa: E402

from dpokit.core.hardware import choose_precision, probe  # noqa: E402
from dpokit.core.sharding import whole  # noqa: E402


def trained_weights(trainer) -> dict[str, torch.Tensor]:
    """Every trained weight, whole (gathered from its shards: a collective), by name."""
    return {n: whole(p).detach().clone()
            for n, p in trainer.policy.named_trainable_parameters().items()}


def main(out_dir: str, batch_size: int, lora: bool, loss: str, extra: str = "{}") -> None:
    rows = unpaired_rows(sentiment_rows()) if loss == "kto" else sentiment_rows()
    cfg = {"max_steps": 3, "batch_size": batch_size, "learning_rate": 1e-2, "max_grad_norm": 1.0,
           "precompute_ref_logps": True, "ref_cache_dir": str(Path(out_dir) / "ref_cache"),
           "loss": loss, **json.loads(extra)}
    tokenizer = make_tokenizer()
    model = make_tiny_llama(len(tokenizer), tie_word_embeddings=cfg.pop("tied", False))
    if cfg.pop("base_bf16", False):  # the frozen base as run builders load it under bf16 + LoRA
        model.to(torch.bfloat16)  # (peft keeps the adapter it adds in fp32)
    trainer = tiny_trainer(Path(out_dir), tokenizer, model=model, lora=lora, rows=rows, **cfg)
    grad_dtypes = set()  # of the trained weights' gradients, as the optimizer gets them
    for param in trainer.policy.trainable_parameters():
        param.register_post_accumulate_grad_hook(lambda p: grad_dtypes.add(str(p.grad.dtype)))
    fingerprint = trainer.policy.fingerprint()  # (a collective when sharded)
    start = trained_weights(trainer)
    history = trainer.train().history
    end = trained_weights(trainer)
    params = {n: float(p.double().sum()) for n, p in end.items()}
    trainer.save_final()
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"start": start, "end": end}, Path(out_dir, "weights.pt"))  # (tiny)
        Path(out_dir, "result.json").write_text(json.dumps({
            "losses": [m["loss"] for m in history], "steps": [m["step"] for m in history],
            "grad_norms": [m["grad_norm"] for m in history], "params": params,
            "world": trainer.world, "fingerprint": fingerprint,
            "precision": trainer.precision, "grad_dtypes": sorted(grad_dtypes),
            "auto_picks": choose_precision("auto", probe("cpu")).precision,
            "param_dtypes": sorted({str(p.dtype) for p in trainer.policy.trainable_parameters()})}))
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], *sys.argv[5:])
