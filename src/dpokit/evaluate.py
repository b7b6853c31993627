"""Before/after comparisons: held-out preference figures and sample generations.

    >>> texts = generate(policy, tokenizer, ["In one sentence, praise a movie."])  # doctest: +SKIP
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(policy, tokenizer, prompts: list[str], max_new_tokens: int = 40,
             chat: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` by the policy's model (the adapter, if any, active)."""
    model = policy.model
    was_training = model.training
    model.eval()
    outputs = []
    for prompt in prompts:
        if chat and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(next(model.parameters()).device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, use_cache=True)
        outputs.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return outputs


def comparison_table(before: dict, after: dict) -> str:
    """A small text table of held-out figures before and after training."""
    rows = [
        ("preference accuracy (own log-prob ranking)", "eval/logp_accuracy", "{:.3f}"),
        ("  same, log-prob per token", "eval/logp_accuracy_per_token", "{:.3f}"),
        ("implicit-reward accuracy", "eval/rewards/accuracies", "{:.3f}"),
        ("mean implicit-reward margin", "eval/rewards/margins", "{:+.4f}"),
        ("DPO loss", "eval/loss", "{:.4f}"),
        ("mean log-prob, chosen", "eval/logps/chosen", "{:.2f}"),
        ("mean log-prob, rejected", "eval/logps/rejected", "{:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'held-out figure':<{width}}  {'before':>9}  {'after':>9}"]
    for label, key, fmt in rows:
        lines.append(f"{label:<{width}}  {fmt.format(before[key]):>9}  {fmt.format(after[key]):>9}")
    return "\n".join(lines)
