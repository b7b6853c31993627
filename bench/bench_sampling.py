"""Sampling throughput: dpokit's batched, left-padded, KV-cache sampler against plain
``model.generate`` one prompt (one sample) at a time, on the embedded SmolLM2, side by side in
one process. Also checks that greedy decoding gives the same texts both ways.

    python bench/bench_sampling.py --prompts 16 --samples 4 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dpokit.policies.causal_lm.models import load_causal_lm, load_tokenizer  # noqa: E402
from dpokit.policies.causal_lm.sampling import (  # noqa: E402
    SamplingSettings,
    render_prompt,
    sample_completions,
)


def plain_generate(model, tokenizer, prompts, samples, max_new_tokens, temperature, top_p, seed):
    """The baseline: one unpadded prompt, one sample, per ``model.generate`` call."""
    torch.manual_seed(seed)
    texts, tokens = [], 0
    for prompt in prompts:
        ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False,
                        return_tensors="pt")["input_ids"]
        for _ in range(samples):
            sampling = temperature > 0
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=max_new_tokens, do_sample=sampling,
                                 temperature=temperature if sampling else None,
                                 top_p=top_p if sampling else None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)
            new = out[0, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            tokens += len(new)
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    tokenizer, model = load_tokenizer("smollm2"), load_causal_lm("smollm2").eval()
    rows = [json.loads(x) for x in (ROOT / "data" / "review_prompts.train.jsonl").read_text()
            .splitlines()]
    prompts = [r["prompt"] for r in rows][:args.prompts]
    results = {}

    started = time.perf_counter()
    _, tokens = plain_generate(model, tokenizer, prompts, args.samples, args.max_new_tokens,
                               0.8, 0.95, 0)
    seconds = time.perf_counter() - started
    results["plain, one at a time"] = {"seconds": seconds, "tokens": tokens}
    print(f"plain generate, one at a time: {tokens} tokens in {seconds:.1f} s = "
          f"{tokens / seconds:.1f} tokens/s", flush=True)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        settings = SamplingSettings(num_samples=args.samples, max_new_tokens=args.max_new_tokens,
                                    temperature=0.8, top_p=0.95, seed=0, batch_size=batch)
        started = time.perf_counter()
        out = sample_completions(model, tokenizer, prompts, settings)
        seconds = time.perf_counter() - started
        tokens = sum(s.num_tokens for g in out for s in g)
        results[f"dpokit, batch {batch}"] = {"seconds": seconds, "tokens": tokens}
        print(f"dpokit batched (batch {batch}): {tokens} tokens in {seconds:.1f} s = "
              f"{tokens / seconds:.1f} tokens/s", flush=True)
    base = results["plain, one at a time"]
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["speedup"] = r["tokens_per_s"] / (base["tokens"] / base["seconds"])
    greedy = SamplingSettings(num_samples=1, max_new_tokens=24, temperature=0, batch_size=16)
    batched = [g[0].text for g in sample_completions(model, tokenizer, prompts, greedy)]
    plain, _ = plain_generate(model, tokenizer, prompts, 1, 24, 0, 1.0, 0)
    same = sum(a == b for a, b in zip(batched, plain, strict=True))
    results["greedy texts identical"] = f"{same}/{len(prompts)}"
    print(f"greedy: batched == one at a time for {same}/{len(prompts)} prompts")
    print(json.dumps(results, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
