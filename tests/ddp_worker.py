"""Run by test_distributed.py: a few training steps in 1 or 2 processes (gloo, CPU), with the
strategy and any config given as JSON (resume, checkpoints, FSDP2)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_tiny_llama, make_tokenizer, sentiment_rows, unpaired_rows  # noqa: E402
from helpers import tiny_trainer  # noqa: E402

from dpokit.core.sharding import whole  # noqa: E402


def main(out_dir: str, batch_size: int, lora: bool, loss: str, extra: str = "{}") -> None:
    rows = unpaired_rows(sentiment_rows()) if loss == "kto" else sentiment_rows()
    cfg = {"max_steps": 3, "batch_size": batch_size, "learning_rate": 1e-2, "max_grad_norm": 1.0,
           "precompute_ref_logps": True, "ref_cache_dir": str(Path(out_dir) / "ref_cache"),
           "loss": loss, **json.loads(extra)}
    tokenizer = make_tokenizer()
    model = make_tiny_llama(len(tokenizer), tie_word_embeddings=cfg.pop("tied", False))
    trainer = tiny_trainer(Path(out_dir), tokenizer, model=model, lora=lora, rows=rows, **cfg)
    fingerprint = trainer.policy.fingerprint()  # (a collective when sharded)
    history = trainer.train().history
    params = {n: float(whole(p).detach().double().sum())
              for n, p in trainer.policy.named_trainable_parameters().items()}
    trainer.save_final()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out_dir, "result.json").write_text(json.dumps({
            "losses": [m["loss"] for m in history], "steps": [m["step"] for m in history],
            "grad_norms": [m["grad_norm"] for m in history], "params": params,
            "world": trainer.world, "fingerprint": fingerprint}))
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], *sys.argv[5:])
