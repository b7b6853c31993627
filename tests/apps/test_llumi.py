"""LLUMI's rubric on known texts: the readability formula by hand, the safety policy's flags,
the offline judge's ordering of replies (real all-MiniLM-L6-v2 embeddings), the report."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from dpokit.apps.llumi import (
    LexiconJudge,
    SafetyPolicy,
    check_safety,
    flesch_kincaid_grade,
    flesch_reading_ease,
    score_replies,
)
from dpokit.apps.llumi.rubric import syllables


def test_readability_by_hand():
    text = "I hear you. Try to rest tonight, and call a friend tomorrow."
    # words 12, sentences 2, syllables: I hear you (3) Try to rest to-night (5) and call a
    # friend to-mor-row (7) = 15
    assert [syllables(w) for w in ("tonight", "tomorrow", "friend")] == [2, 3, 1]
    assert flesch_reading_ease(text) == pytest.approx(206.835 - 1.015 * 6 - 84.6 * 15 / 12)
    assert flesch_kincaid_grade(text) == pytest.approx(0.39 * 6 + 11.8 * 15 / 12 - 15.59)
    hard = ("Notwithstanding considerable institutional uncertainty, comprehensive "
            "psychological interventions demonstrate substantial effectiveness.")
    assert flesch_reading_ease(hard) < 0 < 60 < flesch_reading_ease(text)
    assert flesch_reading_ease("") == 0.0


@pytest.mark.parametrize("post,reply,risk,flags", [
    ("I feel like I want to end my life.", "Please call a crisis line or 988 tonight.", True,
     ()),
    ("I feel like I want to end my life.", "That sounds hard. Sleep on it.", True,
     ("no_resources",)),
    ("Thinking about suicide again.", "Talk to a doctor. The lethal dose is high.", True,
     ("harmful_detail",)),
    ("I failed my exam.", "Get over it, everyone fails.", False, ("dismissive",)),
    ("I failed my exam.", "That sounds disappointing; try asking for feedback.", False, ()),
])
def test_safety_policy_flags(post, reply, risk, flags):
    verdict = check_safety(post, reply)
    assert (verdict.risk, verdict.flags, verdict.handled) == (risk, flags, not flags)


def test_safety_policy_is_configurable():
    policy = SafetyPolicy(risk=("panic attack",), help=("breathing exercise",))
    assert check_safety("I had a panic attack", "Here is a breathing exercise.", policy).handled
    assert check_safety("I had a panic attack", "ok", policy).flags == ("no_resources",)


@pytest.fixture(scope="module")
def judge():
    return LexiconJudge()  # the packaged all-MiniLM-L6-v2


def test_offline_judge_orders_known_replies(judge):
    post = "I've been so lonely since moving to a new city for work. I don't know anyone."
    warm = ("I'm sorry, that sounds really isolating. Moving to a new city is hard. You could "
            "try a weekly class or a club, and consider reaching out to a coworker for lunch.")
    curt = "Ok."
    off = "The stock market closed higher today on strong earnings reports."
    w, c, o = judge(post, warm), judge(post, curt), judge(post, off)
    assert w["empathy"] > c["empathy"] and w["empathy"] > o["empathy"]
    assert w["connection"] > o["connection"]
    assert w["actionability"] == 1.0 and c["actionability"] == 0.0
    assert w["safety"] == c["safety"] == 1.0
    assert all(0.0 <= v <= 1.0 for s in (w, c, o) for v in s.values())


def test_report_means_and_a_judge_hook():
    def fixed(post, reply):
        return {"empathy": 1.0, "connection": 0.5, "actionability": 0.0,
                "safety": 1.0 if "988" in reply else 0.0}

    posts = ["I want to end my life.", "My cat died."]
    replies = ["Call 988 now.", "Just get over it."]
    report = score_replies(posts, replies, fixed)
    assert report.means["empathy"] == 1.0 and report.means["safety"] == 0.5
    assert (report.flagged, report.risky_posts) == (1, 1)
    assert report.means["readability"] == pytest.approx(
        (flesch_reading_ease(replies[0]) + flesch_reading_ease(replies[1])) / 2)
    with pytest.raises(ValueError, match="no score for"):
        score_replies(posts, replies, lambda p, r: {"empathy": 1.0})


def test_judge_takes_any_embedding_function():
    def embed(texts):
        return torch.nn.functional.normalize(torch.tensor(
            [[1.0, float("sorry" in t.lower())] for t in texts]), dim=-1)

    scores = LexiconJudge(embed=embed)("a post", "I'm sorry. Try to rest.")
    assert scores["connection"] == pytest.approx(2 ** -0.5, rel=1e-5)


def test_stage_rows_from_vote_pairs():
    from dpokit.apps.llumi import generation_prompt, generation_rows, improvement_rows

    pairs = [{"prompt": "P1", "chosen": "good", "rejected": "bad", "score_ratio": 3.0},
             {"prompt": "P1", "chosen": "best", "rejected": "bad", "score_ratio": 6.0},
             {"prompt": "P2", "chosen": "fine", "rejected": "meh", "score_ratio": 2.0}]
    gen = generation_rows(pairs)
    assert [r["completion"] for r in gen["sft"]] == ["best", "fine"]  # most decisive per post
    assert len(gen["dpo"]) == 3 and gen["dpo"][0]["prompt"] == generation_prompt("P1")
    imp = improvement_rows(pairs)
    assert imp["sft"][0]["completion"] == "good" and "Reply: bad" in imp["sft"][0]["prompt"]
    assert [(r["chosen"], r["rejected"]) for r in imp["dpo"]] == [
        ("good", "bad"), ("best", "bad"), ("fine", "meh")]


@pytest.mark.any_precision  # (the stages' files and rows: in any)
def test_stages_chain_sft_dpo1_dpo2_through_the_cli(tmp_path, tiny_model_dir):
    """threads table -> vote pairs -> generation rows -> SFT -> DPO1 (reference: the SFT
    adapter) -> rated outputs -> pairs -> DPO2 (reference: the DPO1 adapter): each DPO round
    starts at its reference (loss ln 2, margins 0), and each hands an adapter to the next."""
    import json

    from dpokit.apps.llumi import generation_prompt, generation_rows, improvement_rows
    from dpokit.cli import main

    threads = REPO / "data" / "support_threads.train.csv"
    pairs = tmp_path / "votes.jsonl"
    assert main(["pairs", "votes", str(threads), "--out", str(pairs), "--order", "any"]) == 0
    votes = [json.loads(line) for line in pairs.read_text().splitlines()][:12]
    some = tmp_path / "votes12.jsonl"
    some.write_text("".join(json.dumps(v) + "\n" for v in votes))
    files = {}
    for kind, stage in (("sft", "sft"), ("dpo", "dpo1")):  # `dpokit pairs llumi` writes them
        files[kind] = tmp_path / f"gen_{kind}.jsonl"
        assert main(["pairs", "llumi", str(some), "--model", "generation", "--stage", stage,
                     "--out", str(files[kind])]) == 0
        written = [json.loads(line) for line in files[kind].read_text().splitlines()]
        assert written == generation_rows(votes)[kind]
    improved = tmp_path / "imp_dpo.jsonl"
    assert main(["pairs", "llumi", str(some), "--model", "improvement", "--stage", "dpo1",
                 "--out", str(improved)]) == 0
    assert [json.loads(line) for line in improved.read_text().splitlines()] == \
        improvement_rows(votes)["dpo"]
    common = ["progress_bar=false", "log_with=[]", "lora=true", "lora_r=4", "batch_size=4",
              "max_length=768", "max_prompt_length=512", "eval_data=null", "eval_fraction=0",
              f"ref_cache_dir={tmp_path / 'cache'}", "learning_rate=1e-2"]
    assert main(["sft", f"model={tiny_model_dir}", f"train_data={files['sft']}",
                 "max_steps=2", f"output_dir={tmp_path / 'sft'}", *common]) == 0
    assert main(["train", f"model={tmp_path / 'sft' / 'final'}", f"train_data={files['dpo']}",
                 "max_steps=2", f"output_dir={tmp_path / 'dpo1'}", *common]) == 0
    rated = tmp_path / "rated.jsonl"  # e.g. human evaluation of DPO1's replies
    posts = sorted({r["prompt"] for r in votes})[:4]
    rated.write_text("".join(json.dumps({"prompt": generation_prompt(p), "response": reply,
                                         "score": score}) + "\n"
                             for p in posts for reply, score in
                             (("That sounds hard. Try a short walk.", 4), ("Ok.", 1))))
    dpo2_rows = tmp_path / "dpo2.jsonl"
    assert main(["pairs", "scored", str(rated), "--out", str(dpo2_rows)]) == 0
    assert main(["train", f"model={tmp_path / 'dpo1' / 'final'}", f"train_data={dpo2_rows}",
                 "max_steps=1", f"output_dir={tmp_path / 'dpo2'}", *common]) == 0
    for stage in ("dpo1", "dpo2"):
        first = json.loads((tmp_path / stage / "metrics.jsonl").read_text().splitlines()[0])
        assert first["loss"] == pytest.approx(0.693147, abs=1e-5), stage
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6), stage
        assert (tmp_path / stage / "final" / "adapter_config.json").is_file()


def test_shipped_llumi_recipes_load():
    from dpokit.config import load_config

    sft = load_config("src/dpokit/recipes/llumi_sft.yaml", [])
    dpo = load_config("src/dpokit/recipes/llumi_dpo1.yaml", [])
    assert sft.data.train_data.endswith("generation/sft.jsonl") and sft.model.lora
    assert dpo.model.name == "outputs/llumi/generation/sft/final" and dpo.loss.name == "sigmoid"


def test_improvement_targets_revise_the_draft():
    """With the synthetic world's reviser, the target keeps the draft's sentences (a curt
    line last, a dismissive one dropped) and adds what it lacks; DPO1's rejected: the draft."""
    from dpokit.apps.llumi import improvement_rows
    from dpokit.apps.llumi.build_data import HELP, RISK, SITUATIONS, revise
    from dpokit.apps.llumi.linguistics import key_content_kept

    post = f"{SITUATIONS[2][0]}\n\n{SITUATIONS[2][1]} {RISK[1]} Any advice?"
    draft = "Good luck. That sounds really hard."
    target = revise(post, draft)
    assert target.startswith("That sounds really hard.") and target.endswith("Good luck.")
    assert SITUATIONS[2][2] in target.lower() and any(h in target for h in HELP)  # risky
    assert key_content_kept(draft, target) == 1.0
    assert "get over it" not in revise(post, "Just get over it, honestly.")
    assert revise(post, draft) == target  # seeded by the texts
    rows = improvement_rows([{"prompt": post, "chosen": "Another reply.", "rejected": draft},
                             {"prompt": post, "chosen": "A third one.", "rejected": draft}],
                            revise=revise)
    assert rows["sft"] == [{"prompt": rows["dpo"][0]["prompt"], "completion": target}]
    assert rows["dpo"][0]["rejected"] == draft and len(rows["dpo"]) == 1  # one per draft


def test_held_out_drafts_were_never_training_replies():
    """The held-out threads' replies come from their own phrasings, the training threads
    are as they were (the same draws), and each held-out phrasing carries its kind's cue."""
    import csv
    from pathlib import Path

    from dpokit.apps.llumi.build_data import EVAL_BANKS, TRAIN_BANKS, build

    split = build()
    train = {r[6] for r in split["train"][1:]}
    held = {r[6] for r in split["eval"][1:]}
    assert held and not held & train
    for name in ("train", "eval"):  # the shipped files are the builder's
        data = Path(__file__).resolve().parents[2] / "data" / f"support_threads.{name}.csv"
        with data.open(newline="") as f:
            assert [r for r in csv.reader(f)] == [[str(x) for x in r] for r in split[name]]
    assert {k: len(v) for k, v in EVAL_BANKS.items()} == {k: len(v) for k, v in
                                                          TRAIN_BANKS.items()}


def test_linguistic_analyses_on_known_replies():
    import torch

    from dpokit.apps.llumi.linguistics import analyse, distinct_bigrams, type_token_ratio

    assert type_token_ratio("the cat the cat") == 0.5
    assert distinct_bigrams(["a b a b", "a b"]) == pytest.approx(2 / 4)
    vectors = {"draft": [1.0, 0.0], "same": [1.0, 0.0], "other": [0.0, 1.0]}
    embed = lambda texts: torch.tensor([vectors[t] for t in texts])  # noqa: E731
    kept = analyse(["post", "post"], ["draft", "draft"], ["same", "other"], embed)
    assert kept["draft_similarity"] == pytest.approx(0.5)
    assert set(kept) == {"draft_similarity", "key_content", "ttr", "distinct_2",
                         "style_matching"}
