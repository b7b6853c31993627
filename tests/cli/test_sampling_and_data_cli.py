"""Sampling (batched vs one prompt at a time), the sample builder, `dpokit pairs` / `dpokit
data` from the command line, inspection and the split by prompt."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama, sentiment_rows, write_jsonl

from dpokit.cli import main
from dpokit.data.builders import (
    PromptRow,
    ScoredSettings,
    sample_pairs,
    vote_pairs,
)
from dpokit.data.split import split_by_prompt
from dpokit.data.text.inspect import inspect_data
from dpokit.eval.rewards import load_reward
from dpokit.policies.causal_lm.sampling import SamplingSettings, render_prompt, sample_completions

PROMPTS = ["write one sentence from a positive movie review", "hi", "the capital of france is"]


def greedy_one_at_a_time(model, tokenizer, prompt, max_new_tokens):
    """The plain twin: model.generate on one unpadded prompt."""
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=1).eval()
    settings = SamplingSettings(num_samples=1, max_new_tokens=12, temperature=0, batch_size=3)
    batched = sample_completions(model, tokenizer, PROMPTS, settings)
    assert [g[0].text for g in batched] == [greedy_one_at_a_time(model, tokenizer, p, 12)
                                            for p in PROMPTS]
    assert all(g[0].num_tokens <= 12 for g in batched)


def test_sampling_is_seeded_and_gives_k_per_prompt(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=1)
    settings = SamplingSettings(num_samples=4, max_new_tokens=8, temperature=1.0, seed=5,
                                batch_size=5)
    a = sample_completions(model, tokenizer, PROMPTS, settings)
    b = sample_completions(model, tokenizer, PROMPTS, settings)
    assert [len(g) for g in a] == [4, 4, 4] and a == b
    assert len({s.text for s in a[0]}) > 1  # sampling, not greedy
    unfinished = [s for g in a for s in g if not s.finished]
    assert all(s.num_tokens == 8 for s in unfinished)
    assert model.training  # restored


def test_sample_pairs_with_a_callable_reward(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=2)
    settings = SamplingSettings(num_samples=3, max_new_tokens=10, seed=0)
    reward = load_reward(lambda prompt, completion: float(len(completion)))
    built = sample_pairs([PromptRow(p) for p in PROMPTS],
                         lambda ps: sample_completions(model, tokenizer, ps, settings), reward,
                         ScoredSettings("best_worst"), reward.name)
    for row in built.rows:
        assert len(row["chosen"]) > len(row["rejected"])
        assert row["score_chosen"] == len(row["chosen"]) and row["rule"] == "sample:best_worst"
    assert built.report.kept + built.report.dropped["pair: tied scores"] + built.report.dropped[
        "pair: identical texts"] == len(PROMPTS)
    assert "mean reward of 9 samples" in built.report.summary()


def test_similarity_reward_needs_a_reference():
    reward = load_reward("minilm")  # the packaged all-MiniLM-L6-v2 (a test dependency)
    scores = reward(["q", "q"], ["A man is eating food.", "The stock market fell."],
                    ["A man is eating a piece of bread.", "A man is eating a piece of bread."])
    assert scores[0] == pytest.approx(0.7553, abs=2e-3) and scores[1] < 0.2
    with pytest.raises(ValueError, match="reference"):
        reward(["q"], ["text"])


def test_vader_reward_and_its_negation():
    texts = ["What a wonderful, moving film.", "A dull, awful mess."]
    up, down = load_reward("vader")(["q", "q"], texts), load_reward("vader_negative")(["q"] * 2,
                                                                                        texts)
    assert up[0] > 0.5 > -0.5 > up[1] and down == [-x for x in up]


def test_guarded_reward_scores_degenerate_answers_minus_one():
    reward = load_reward("guarded:vader")
    assert reward.name == "guarded:vader"
    good, loop, cut = reward(["q"] * 3, ["A wonderful film.", "wonderful " * 12,
                                          "A wonderful film that"])
    assert good > 0.5 and loop == -1.0 and cut == -1.0


def test_unknown_reward_is_named():
    with pytest.raises(ValueError, match="unknown reward 'vadr'"):
        load_reward("vadr")


# --- command line -----------------------------------------------------------------------------

def test_pairs_votes_and_scored_from_the_command_line(tmp_path, capsys):
    comments = [
        {"post_id": "p", "post": "Q?", "post_score": 30, "comment_id": c, "parent_id": "",
         "text": t, "score": s, "created": ts}
        for c, t, s, ts in [("a", "first", 3, 10), ("b", "later, better", 9, 20),
                            ("r", "a reply", 50, 30)]]
    comments[2]["parent_id"] = "a"
    src = write_jsonl(tmp_path / "comments.jsonl", comments)
    assert main(["pairs", "votes", str(src), "--out", str(tmp_path / "v.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [(r["chosen_id"], r["rejected_id"]) for r in rows] == [("b", "a")]
    out = capsys.readouterr().out
    assert "1 pairs written" in out and "1  comment: reply to a comment" in out
    report = json.loads((tmp_path / "v.jsonl.report.json").read_text())
    assert report["dropped"] == {"comment: reply to a comment": 1}

    scored = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Q", "responses": ["x", "y", "z"],
                                                 "scores": [1, 5, 3]}])
    assert main(["pairs", "scored", str(scored), "--out", str(tmp_path / "s.parquet"),
                 "--pairing", "all_pairs", "--margin", "2"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "s.parquet").to_pylist()
    # scores x 1, y 5, z 3: every difference is at least the margin 2
    assert sorted((r["chosen"], r["rejected"]) for r in table) == [("y", "x"), ("y", "z"),
                                                                   ("z", "x")]


def test_bad_builder_input_is_one_line_exit_2(tmp_path, capsys):
    src = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "responses": "not a list"}])
    assert main(["pairs", "scored", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dpokit: error: {src}, row 1, field 'responses': expected a list"


def test_failures_from_rows_with_outputs(tmp_path, capsys):
    src = write_jsonl(tmp_path / "f.jsonl", [
        {"prompt": "Capital of France?", "reference": "Paris.",
         "outputs": ["Paris.", "I'm sorry, I can't.", ""]}])
    assert main(["pairs", "failures", str(src), "--out", str(tmp_path / "o.jsonl"),
                 "--detectors", "empty,refusal"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["rejected"], r["failure"]) for r in rows] == [("I'm sorry, I can't.", "refusal"),
                                                             ("", "empty")]


# --- inspect and split ------------------------------------------------------------------------

def test_inspect_counts_duplicates_identical_overlap_and_length_bias(tmp_path, tokenizer):
    rows = [{"prompt": "p1", "chosen": "a much longer chosen answer", "rejected": "short"},
            {"prompt": "p1", "chosen": "a much longer chosen answer", "rejected": "short"},
            {"prompt": "p2", "chosen": "same", "rejected": "same"},
            {"prompt": "p3", "chosen": "another long chosen answer here", "rejected": "no"}]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    held = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p3", "chosen": "x", "rejected": "y"},
                                              {"prompt": "p9", "chosen": "x", "rejected": "y"}])
    report = inspect_data(str(train), str(held), tokenizer, max_length=8, max_prompt_length=64)
    assert (report.rows, report.duplicates, report.identical) == (4, 1, 1)
    assert (report.chosen_longer, report.rejected_longer) == (3, 0)
    assert (report.shared_prompts, report.eval_rows_with_shared_prompt) == (1, 1)
    assert report.over_length_limit >= 1
    text = report.text()
    assert "chosen longer in 75.0% of pairs" in text and "1 duplicate pairs" in text
    assert "prompts are in both train and eval" in text
    png = report.plot(tmp_path / "h.png")
    assert png.stat().st_size > 1000


def test_split_by_prompt_never_shares_a_prompt_and_ignores_file_order():
    rows = sentiment_rows(3) + [{"prompt": f"extra {i}", "chosen": "a", "rejected": "b"}
                                for i in range(20)]
    s = split_by_prompt(rows, 0.2, seed=1)
    train_p = {r["prompt"] for r in s.train}
    assert not train_p & {r["prompt"] for r in s.eval}
    assert len(s.train) + len(s.eval) == len(rows)
    shuffled = split_by_prompt(list(reversed(rows)), 0.2, seed=1)
    assert {r["prompt"] for r in shuffled.eval} == {r["prompt"] for r in s.eval}
    assert {r["prompt"] for r in split_by_prompt(rows, 0.2, seed=2).eval} != {
        r["prompt"] for r in s.eval}


def test_data_split_and_inspect_commands(tmp_path, capsys):
    rows = [{"prompt": f"p{i % 7}", "chosen": "good answer.", "rejected": "bad"}
            for i in range(30)]
    src = write_jsonl(tmp_path / "all.jsonl", rows)
    assert main(["data", "split", str(src), "--eval-fraction", "0.3"]) == 0
    train = tmp_path / "all.train.jsonl"
    held = tmp_path / "all.eval.jsonl"
    assert len(train.read_text().splitlines()) + len(held.read_text().splitlines()) == 30
    out = capsys.readouterr().out
    assert "none in both" in out
    assert main(["data", "inspect", str(train), "--eval", str(held), "--model", "none",
                 "--png", str(tmp_path / "len.png")]) == 0
    out = capsys.readouterr().out
    assert "0 prompts also in train" in out and "words:" in out
    assert "duplicate pairs" in out and (tmp_path / "len.png").is_file()


def test_classifier_reward_reads_the_named_label(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         num_labels=2, pad_token_id=tokenizer.pad_token_id,
                         id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1})
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    reward = load_reward(f"hf:{tmp_path / 'clf'}@good")
    prompts, texts = ["hi", "the capital"], ["a good movie", "of france is paris"]
    got = reward(prompts, texts)
    for prompt, text, value in zip(prompts, texts, got, strict=True):
        enc = tokenizer(prompt, text, return_tensors="pt")
        with torch.no_grad():
            assert value == pytest.approx(model(**enc).logits[0, 1].item(), abs=1e-5)
    with pytest.raises(ValueError, match="no label 'great'"):
        load_reward(f"hf:{tmp_path / 'clf'}@great")


def test_failures_generates_when_rows_have_no_outputs(tmp_path, tiny_model_dir, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "reference": "Hello."},
                                             {"prompt": "the capital", "reference": "Paris."}])
    assert main(["pairs", "failures", str(src), "--out", str(tmp_path / "o.jsonl"), "--model",
                 str(tiny_model_dir), "--num-samples", "2", "--max-new-tokens", "6"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    # a random tiny model never ends a sentence within 6 tokens: every sample is cut off
    assert rows and all("truncation" in r["failure"] and r["chosen"] in ("Hello.", "Paris.")
                        for r in rows)


def test_sampling_leaves_the_global_random_stream_alone(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample_completions(model, tokenizer, ["hi"], SamplingSettings(num_samples=2,
                                                                  max_new_tokens=4, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_threads_table_adapter_and_cli(tmp_path, capsys):
    """A threads CSV (one row per reply, upvotes and downvotes): its net votes drive the SHP
    rules; the CLI recognizes it; a missing column names the row."""
    import csv

    from dpokit.cli import main
    from dpokit.data.builders import threads_rows

    header = ["thread_id", "thread_title", "thread_text", "thread_score", "reply_id",
              "parent_id", "reply_text", "upvotes", "downvotes", "created", "author"]
    table = [["t1", "Can't sleep", "Anxious every night.", "30", "r1", "", "Try a routine.",
              "5", "1", "100", "a"],
             ["t1", "Can't sleep", "Anxious every night.", "30", "r2", "",
              "I'm sorry, that sounds exhausting. Try writing worries down.", "15", "3", "200",
              "b"],
             ["t1", "Can't sleep", "Anxious every night.", "30", "r3", "r1", "Same.", "40", "0",
              "300", "c"]]
    path = tmp_path / "threads.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    rows = threads_rows([dict(zip(header, r, strict=True)) for r in table])
    assert [r.values["score"] for r in rows] == [4.0, 12.0, 40.0]
    built = vote_pairs(rows)
    assert [(r["prompt"], r["chosen_id"], r["rejected_id"]) for r in built.rows] == [
        ("Can't sleep\n\nAnxious every night.", "r2", "r1")]  # 12 >= 2 x 4, written later
    assert built.report.dropped["comment: reply to a comment"] == 1
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", "votes", str(path), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    bad = tmp_path / "bad.csv"  # no reply_text column
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows([header[:6] + header[7:], table[0][:6] + table[0][7:]])
    capsys.readouterr()
    assert main(["pairs", "votes", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "bad.csv, row 1, field 'reply_text': missing column" in capsys.readouterr().err


def test_pairs_votes_counts_suffixed_and_unreadable_scores(tmp_path, capsys):
    """The issue's case: comment rows with ``"1.2k"`` scores (as forum exports write them)
    build pairs; a score that is not a number is a counted drop, not a traceback."""
    comments = [
        {"post_id": "p", "post": "Q?", "post_score": "1.1k", "comment_id": c, "parent_id": "",
         "text": c, "score": s, "created": ts}
        for c, s, ts in [("a", "400", 10), ("b", "1.2k", 20), ("c", "n/a", 30)]]
    src = write_jsonl(tmp_path / "comments.jsonl", comments)
    assert main(["pairs", "votes", str(src), "--out", str(tmp_path / "v.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [(r["chosen_id"], r["rejected_id"], r["score_chosen"]) for r in rows] == [
        ("b", "a", 1200.0)]
    assert "1  comment: score is not a number" in capsys.readouterr().out


def test_pairs_votes_min_ratio_domain_includes_1_and_refuses_below(tmp_path, capsys):
    """min_ratio's domain is [1, inf): exactly 1 (any higher score wins) is allowed, below 1
    would let the lower score win, refused before any work."""
    comments = [{"post_id": "p", "post": "Q?", "post_score": 30, "comment_id": c,
                 "parent_id": "", "text": c, "score": s, "created": ts}
                for c, s, ts in [("a", 3, 10), ("b", 4, 20)]]
    src = write_jsonl(tmp_path / "c.jsonl", comments)
    out = tmp_path / "v.jsonl"
    assert main(["pairs", "votes", str(src), "--out", str(out), "--min-ratio", "1"]) == 0
    assert [json.loads(x)["chosen_id"] for x in out.read_text().splitlines()] == ["b"]
    assert main(["pairs", "votes", str(src), "--out", str(out), "--min-ratio", "0.99"]) == 2
    assert "--min-ratio: 0.99 is outside [1, inf)" in capsys.readouterr().err
