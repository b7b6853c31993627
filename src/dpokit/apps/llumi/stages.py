"""LLUMI's two models and their training rows, from vote pairs (``dpokit pairs votes``, SHP
rules; a threads table or Pushshift dumps in).

- the **generation** model writes a reply to a post: SFT on the community's preferred reply
  of each pair, then DPO1 on the pairs themselves;
- the **improvement** model rewrites a human draft for the same post, keeping its intent and
  voice: SFT from the less preferred reply (the draft) to its revision (given a reviser;
  else to the preferred reply), then DPO1 with the draft left as it is as the rejected
  answer (improving beats copying).

DPO2 trains either model further on pairs from rated or ranked outputs (``dpokit pairs scored``
on rows of prompt, response, score), with the DPO1 model as the reference.

    >>> row = {"prompt": "I can't sleep.", "chosen": "That sounds hard. Try a routine.",
    ...        "rejected": "Ok."}
    >>> improvement_rows([row])["dpo"][0]["rejected"]
    'Ok.'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

GENERATION = ("Write a supportive reply to this post from an online support community. Be "
              "warm, specific to what they wrote, and practical.\n\nPost: {post}")
IMPROVEMENT = ("Improve this reply to a post from an online support community. Keep its "
               "intent and voice; make it warmer, more specific to the post and more "
               "helpful.\n\nPost: {post}\n\nReply: {draft}")


def generation_prompt(post: str) -> str:
    return GENERATION.format(post=post.strip())


def improvement_prompt(post: str, draft: str) -> str:
    return IMPROVEMENT.format(post=post.strip(), draft=draft.strip())


def _best_per_post(pairs: Sequence[Mapping]) -> list[Mapping]:
    """One pair per post, the one with the largest score ratio (else the first)."""
    best: dict[str, Mapping] = {}
    for row in pairs:
        key = row["prompt"]
        if key not in best or row.get("score_ratio", 0) > best[key].get("score_ratio", 0):
            best[key] = row
    return list(best.values())


def generation_rows(pairs: Sequence[Mapping]) -> dict[str, list[dict]]:
    """``sft``: each post's preferred reply (from its most decisive pair); ``dpo``: every
    pair."""
    return {"sft": [{"prompt": generation_prompt(r["prompt"]), "completion": r["chosen"]}
                    for r in _best_per_post(pairs)],
            "dpo": [{"prompt": generation_prompt(r["prompt"]), "chosen": r["chosen"],
                     "rejected": r["rejected"]} for r in pairs]}


def improvement_rows(pairs: Sequence[Mapping],
                     revise: Callable[[str, str], str] | None = None) -> dict[str, list[dict]]:
    """``sft``: draft (the less preferred reply) -> its target; ``dpo``: the same prompt,
    chosen = the target, rejected = the draft unchanged. The target: ``revise(post, draft)``,
    the draft revised (its content kept, what it lacks added: the paper's setting, where
    revisions exist; one row per post and draft, however many replies beat the draft),
    else the preferred reply, another commenter's (a replacement)."""
    rows = [{"prompt": improvement_prompt(r["prompt"], r["rejected"]),
             "chosen": revise(r["prompt"], r["rejected"]) if revise else r["chosen"],
             "rejected": r["rejected"]} for r in pairs]
    if revise:
        rows = list({(r["prompt"], r["rejected"]): r for r in rows}.values())
    return {"sft": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows],
            "dpo": rows}
