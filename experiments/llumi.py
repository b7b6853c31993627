"""LLUMI (Kim et al. 2026) end to end on the embedded SmolLM2-135M-Instruct, offline, on the
SYNTHETIC support threads of data/support_threads.*.csv (written for the project; votes from
a stated rule).

Two models, each LoRA: the generation model (post -> reply) and the improvement model (post +
human draft -> improved reply). The generation model: SFT on the community's preferred
replies, DPO1 on vote pairs (SHP rules, any order); the improvement model: SFT from each vote
pair's less preferred reply (the draft) to its revision (build_data.revise: the draft's
sentences kept, what the community rewards and it lacks added), DPO1 with the revision over
the unchanged draft; each then DPO2 on pairs from rated outputs of its DPO1 model with the
DPO1 model as reference. The ratings stand in for LLUMI's human evaluation: a rater that applies
the synthetic community's own rule (empathy, naming the post's specifics, a suggestion, help
on a risky post; dismissal penalized) to each output. Evaluation on held-out threads (3
situations never trained on): the rubric of dpokit.apps.llumi (Flesch readability, the offline
judge's empathy / connection / actionability, the safety policy) for base / SFT / DPO1 /
DPO2 of both models; intent preservation (similarity to the held-out draft, its content
words kept) and the paper's linguistic analyses (lexical diversity, style matching to the
post). Writes experiments/results/llumi.{md,json,png}.

    python experiments/llumi.py             # about 66 minutes on 2 CPU cores
    python experiments/llumi.py --replot
"""

from __future__ import annotations

import csv
import json
import time

from common import (  # noqa: E402
    ROOT,
    check_disjoint,
    disjointness_line,
    experiment,
    pyplot,
    results_dir,
    save_table,
)

from dpokit.cli import main as dpokit  # noqa: E402

OUT = ROOT / "outputs" / "llumi"
THREADS = ROOT / "data" / "support_threads"
COMMON = ["lora=true", "lora_r=16", "lora_alpha=32", "batch_size=8", "mixed_precision=auto",
          "chat_template_for_strings=true", "max_length=384", "max_prompt_length=256",
          "eval_data=null", "eval_fraction=0", "eval_before=false", "progress_bar=false",
          "log_with=[]", "overwrite_output_dir=true", "lr_scheduler=cosine", "warmup_steps=2"]
SAMPLES, RATED_POSTS = 4, 40


def _run(args: list[str]) -> None:
    code = dpokit(args)
    if code:
        raise SystemExit(f"dpokit {' '.join(args[:2])} exited {code}")


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def community_rating(post: str, reply: str) -> float:
    """The synthetic community's vote rule as a rater (src/dpokit/apps/llumi/build_data.py), read
    from cues: empathy 6, the post's specifics 5, a suggestion 6, help on a risky post 10,
    dismissal -8, no help on a risky post -8."""
    from dpokit.apps.llumi.rubric import ACTION_CUES, EMPATHY_CUES, SafetyPolicy, check_safety

    r, policy = reply.lower(), SafetyPolicy()
    post_words = {w.strip(".,!?").lower() for w in post.split() if len(w) > 4}
    verdict = check_safety(post, reply, policy)
    return (6 * any(c in r for c in EMPATHY_CUES)
            + 5 * (len(post_words & {w.strip(".,!?") for w in r.split()}) >= 2)
            + 6 * any(c in r for c in ACTION_CUES)
            + 10 * (verdict.risk and any(h in r for h in policy.help))
            - 8 * ("dismissive" in verdict.flags) - 8 * ("no_resources" in verdict.flags))


def _replies(model: str, prompts: list[str], samples: int = 1) -> list[list[str]]:
    from dpokit.policies.causal_lm.sampling import SamplingSettings, sample_completions
    from dpokit.runs import load_policy

    policy = load_policy(model)
    settings = SamplingSettings(num_samples=samples, max_new_tokens=80,
                                temperature=0.8 if samples > 1 else 0.0, batch_size=16)
    return [[s.text for s in group] for group in
            sample_completions(policy.model, policy.tokenizer, prompts, settings)]


def held_out() -> list[tuple[str, str]]:
    """(post, the draft to improve) per held-out thread: its lowest-voted human reply with
    something to keep (not only a curt or dismissive line; else the lowest-voted)."""
    from dpokit.apps.llumi.build_data import EVAL_BANKS

    empty = set(EVAL_BANKS["curt"]) | set(EVAL_BANKS["dismissive"])
    threads: dict[str, list[dict]] = {}
    with open(f"{THREADS}.eval.csv", newline="") as f:
        for row in csv.DictReader(f):
            threads.setdefault(row["thread_id"], []).append(row)
    out = []
    for rows in threads.values():
        post = f"{rows[0]['thread_title']}\n\n{rows[0]['thread_text']}"
        ranked = sorted(rows, key=lambda r: int(r["upvotes"]) - int(r["downvotes"]))
        draft = next((r for r in ranked if r["reply_text"] not in empty), ranked[0])
        out.append((post, draft["reply_text"]))
    return out


def disjointness() -> list[dict]:
    """The held-out threads' posts and the drafts the improvement model is given against the
    training threads' posts and replies (the held-out threads' replies have phrasings of
    their own: build_data.EVAL_BANKS)."""
    def column(split: str, name: str) -> set[str]:
        with open(f"{THREADS}.{split}.csv", newline="") as f:
            return {row[name] for row in csv.DictReader(f)}

    return [check_disjoint("posts", column("eval", "thread_text"),
                           column("train", "thread_text")),
            check_disjoint("drafts to improve", {d for _, d in held_out()},
                           column("train", "reply_text"))]


def train_model(name: str, rows: dict[str, list[dict]], prompt_of) -> dict[str, str]:
    """SFT -> DPO1 -> (sample, rate, pair) -> DPO2; returns each stage's model."""
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    _run(["sft", f"train_data={_write(out / 'sft.jsonl', rows['sft'])}", "learning_rate=5e-4",
          "num_epochs=2", f"output_dir={out / 'sft'}", *COMMON])
    _run(["train", f"model={out / 'sft' / 'final'}", "learning_rate=5e-4", "num_epochs=2",
          f"train_data={_write(out / 'dpo1.jsonl', rows['dpo'])}", f"output_dir={out / 'dpo1'}",
          *COMMON])
    prompts = list(dict.fromkeys(r["prompt"] for r in rows["dpo"]))[:RATED_POSTS]
    drawn = _replies(str(out / "dpo1" / "final"), prompts, SAMPLES)
    rated = [{"prompt": p, "response": reply, "score": community_rating(prompt_of(p), reply)}
             for p, group in zip(prompts, drawn, strict=True) for reply in group]
    _write(out / "rated.jsonl", rated)
    _run(["pairs", "scored", str(out / "rated.jsonl"), "--out", str(out / "dpo2.jsonl")])
    _run(["train", f"model={out / 'dpo1' / 'final'}", f"train_data={out / 'dpo2.jsonl'}",
          "learning_rate=5e-4", "num_epochs=2", f"output_dir={out / 'dpo2'}", *COMMON])
    return {"base": "smollm2", "SFT": str(out / "sft" / "final"),
            "DPO1": str(out / "dpo1" / "final"), "DPO2": str(out / "dpo2" / "final")}


def run() -> dict:
    from dpokit.apps.llumi import (
        LexiconJudge,
        analyse,
        generation_prompt,
        generation_rows,
        improvement_prompt,
        improvement_rows,
        score_replies,
    )
    from dpokit.apps.llumi.build_data import revise

    started = time.perf_counter()
    checked = disjointness()
    OUT.mkdir(parents=True, exist_ok=True)
    _run(["pairs", "votes", f"{THREADS}.train.csv", "--order", "any",
          "--out", str(OUT / "votes.jsonl")])
    votes = [json.loads(line) for line in (OUT / "votes.jsonl").read_text().splitlines()]
    post_of = {generation_prompt(v["prompt"]): v["prompt"] for v in votes}
    post_of.update({improvement_prompt(v["prompt"], v["rejected"]): v["prompt"] for v in votes})
    models = {"generation": train_model("generation", generation_rows(votes), post_of.get),
              "improvement": train_model("improvement", improvement_rows(votes, revise),
                                         post_of.get)}
    trained = time.perf_counter()
    judge, tests = LexiconJudge(), held_out()
    posts, drafts = [p for p, _ in tests], [d for _, d in tests]
    data: dict = {"arms": {}, "held_out_posts": len(tests), "vote_pairs": len(votes),
                  "disjointness": checked}
    drafts_report = score_replies(posts, drafts, judge)
    data["human drafts"] = {**drafts_report.means, "flagged": drafts_report.flagged,
                            **analyse(posts, drafts, drafts, judge.embed)}
    for kind, stages in models.items():
        prompts = ([generation_prompt(p) for p in posts] if kind == "generation"
                   else [improvement_prompt(p, d) for p, d in tests])
        for stage, model in stages.items():
            replies = [g[0] for g in _replies(model, prompts)]
            report = score_replies(posts, replies, judge)
            data["arms"][f"{kind} / {stage}"] = {
                **report.means, "flagged": report.flagged, "risky_posts": report.risky_posts,
                "community_rating": sum(community_rating(p, r) for p, r in
                                        zip(posts, replies, strict=True)) / len(posts),
                **analyse(posts, drafts, replies, judge.embed), "example": replies[0]}
            print(kind, stage, report.row(), flush=True)
    data["minutes"] = (time.perf_counter() - started) / 60
    data["train_minutes"] = (trained - started) / 60
    return data


def write(data: dict) -> None:
    lines = ["# LLUMI on SmolLM2-135M-Instruct (SYNTHETIC support threads)", "",
             f"{data['held_out_posts']} held-out posts (situations never trained on); "
             + disjointness_line(data.get("disjointness", [])) + " "
             f"{data['vote_pairs']} vote pairs; {data['minutes']:.0f} minutes "
             f"({data['train_minutes']:.0f} training). Readability: Flesch reading ease "
             "(higher is easier); grade: Flesch-Kincaid; empathy, connection, actionability: "
             "the offline judge in [0, 1]; safety: share of replies the policy does not flag; "
             "community: the synthetic community's rule (the DPO2 rater).", "",
             "| model / stage | readability | grade | empathy | connection | actionability | "
             "safety | flagged | community |", "|---|---|---|---|---|---|---|---|---|"]
    rows = {"human drafts (the improvement model's input)": data["human drafts"],
            **data["arms"]}
    for name, r in rows.items():
        community = f"{r['community_rating']:.2f}" if "community_rating" in r else "-"
        lines.append(f"| {name} | {r['readability']:.1f} | {r['grade']:.1f} | "
                     f"{r['empathy']:.3f} | {r['connection']:.3f} | {r['actionability']:.3f} | "
                     f"{r['safety']:.3f} | {r['flagged']} | {community} |")
    if "draft_similarity" in data["human drafts"]:
        lines += ["", "Intent preservation and the paper's linguistic analyses: similarity to "
                  "the held-out draft (MiniLM cosine) and the draft's content words kept "
                  "(stemmed; for the generation model, which never sees the draft, a "
                  "baseline), type-token ratio, distinct bigrams over all replies (low: "
                  "repeated phrasings), language style matching to the post (Ireland and "
                  "Pennebaker 2010; 8 function-word categories).", "",
                  "| model / stage | draft similarity | draft content kept | type-token ratio "
                  "| distinct-2 | style matching |", "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['draft_similarity']:.3f} | {r['key_content']:.3f} | "
                         f"{r['ttr']:.3f} | {r['distinct_2']:.3f} | "
                         f"{r['style_matching']:.3f} |")
    save_table("llumi", lines)


def plot(data: dict) -> None:
    plt = pyplot()
    criteria = ["empathy", "connection", "actionability", "safety"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, kind in zip(axes, ("generation", "improvement"), strict=True):
        arms = [a for a in data["arms"] if a.startswith(kind)]
        width = 0.8 / len(arms)
        for k, arm in enumerate(arms):
            ax.bar([i + k * width for i in range(len(criteria))],
                   [data["arms"][arm][c] for c in criteria], width, label=arm.split(" / ")[1])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(criteria))], criteria)
        ax.set_title(f"{kind} model")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("rubric score (offline judge)")
    fig.suptitle("LLUMI stages on held-out SYNTHETIC support posts")
    fig.savefig(results_dir() / "llumi.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    experiment("llumi", run, write, plot)
