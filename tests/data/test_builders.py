"""Pair builders on small inputs whose expected pairs are written out by hand."""

from __future__ import annotations

import pytest

from dpokit.data.builders import (
    FailureSettings,
    ScoredSettings,
    VoteRules,
    detect_failures,
    failure_pairs,
    pair_scored,
    reddit_rows,
    scored_groups,
    vote_pairs,
)
from dpokit.data.io import DataError


def comment(cid, score, created, text=None, post_id="p1", post_score=50, **extra):
    return {"post_id": post_id, "title": "How do I season a pan?", "body": "Cast iron.",
            "post_score": post_score, "comment_id": cid, "parent_id": "", "text": text or cid,
            "score": score, "created": created, "post_author": "op", "author": f"u_{cid}",
            **extra}


def pairs_of(built):
    return [(r["chosen_id"], r["rejected_id"]) for r in built.rows]


# --- votes: the SHP rules ---------------------------------------------------------------------

def test_later_but_higher_is_preferred_and_earlier_but_higher_is_not():
    built = vote_pairs([comment("old", 4, 100), comment("late", 12, 500),
                        comment("early_big", 40, 50)])
    # early_big (40, t=50) beats both on score but was written first: visibility, no pair.
    # late (12, t=500) vs old (4, t=100): later, 3x -> pair.
    assert pairs_of(built) == [("late", "old")]
    row = built.rows[0]
    assert row["prompt"] == "How do I season a pan?\n\nCast iron."
    assert (row["score_chosen"], row["score_rejected"], row["score_ratio"]) == (12, 4, 3.0)
    assert row["seconds_difference"] == 400 and row["rule"] == "votes:later_preferred"
    assert built.report.dropped["pair: higher score but written earlier (visibility)"] == 2


def test_literal_order_and_any_order_are_available():
    rows = [comment("old", 4, 100), comment("late", 12, 500), comment("early_big", 40, 50)]
    # the literal reading: the earlier, higher comment wins; late vs old: later -> no pair
    assert pairs_of(vote_pairs(rows, VoteRules(order="earlier_preferred"))) == [
        ("early_big", "late"), ("early_big", "old")]
    assert sorted(pairs_of(vote_pairs(rows, VoteRules(order="any")))) == [
        ("early_big", "late"), ("early_big", "old"), ("late", "old")]


def test_equal_timestamps_pair_and_exactly_twice_counts():
    built = vote_pairs([comment("a", 10, 100), comment("b", 5, 100), comment("c", 6, 100)])
    # a/b = 2.0 exactly: kept; a/c = 1.67: dropped; c/b = 1.2: dropped
    assert pairs_of(built) == [("a", "b")]
    assert built.report.dropped["pair: score ratio below 2"] == 2


def test_ties_never_pair():
    built = vote_pairs([comment("a", 8, 100), comment("b", 8, 50)], VoteRules(min_ratio=1.0))
    assert built.rows == [] and built.report.dropped["pair: tied scores"] == 1


def test_replies_deleted_moderators_post_author_edited_are_dropped():
    rows = [comment("good", 30, 500), comment("base", 3, 100),
            comment("reply", 90, 600, parent_id="base"),
            comment("gone", 90, 600, author="[deleted]"),
            comment("removed", 90, 600, text="[removed]"),
            comment("mod", 90, 600, distinguished="moderator"),
            comment("op_reply", 90, 600, author="op"),
            comment("changed", 90, 600, edited=1690000000)]
    built = vote_pairs(rows)
    assert pairs_of(built) == [("good", "base")]
    d = built.report.dropped
    assert (d["comment: reply to a comment"], d["comment: deleted author"],
            d["comment: deleted or empty text"], d["comment: moderator"],
            d["comment: post author's comment"], d["comment: edited"]) == (1, 1, 1, 1, 1, 1)


def test_post_and_comment_score_floors_and_missing_scores():
    low_post = [comment("a", 30, 500, post_id="p2", post_score=9),
                comment("b", 3, 100, post_id="p2", post_score=9)]
    rows = low_post + [comment("x", 30, 500), comment("y", 1, 100), comment("z", None, 100),
                       comment("w", 3, 100)]
    built = vote_pairs(rows)
    assert pairs_of(built) == [("x", "w")]
    d = built.report.dropped
    assert d["post: post score below 10"] == 1 and d["comment: in a dropped post (post score "
                                                      "below 10)"] == 2
    assert d["comment: score below 2"] == 1 and d["comment: missing score"] == 1


def test_non_positive_scores_pass_only_a_lowered_floor_and_never_make_a_ratio():
    rows = [comment("a", 5, 500), comment("b", 0, 100), comment("c", -3, 100)]
    built = vote_pairs(rows, VoteRules(min_comment_score=-10))
    # a/b, a/c, b/c: the lower score is 0 or negative each time
    assert built.rows == [] and built.report.dropped["pair: non-positive score"] == 3


def test_max_comments_per_post_keeps_the_highest_scores():
    rows = [comment(f"c{i}", 2 + i, 1000 - i) for i in range(6)]  # higher score = earlier
    rows.append(comment("late", 100, 5000))
    built = vote_pairs(rows, VoteRules(max_comments_per_post=3))
    # considered: late (100), c5 (7), c4 (6); late beats c5 and c4 (later, >= 2x)
    assert sorted(pairs_of(built)) == [("late", "c4"), ("late", "c5")]
    assert built.report.dropped["comment: over max_comments_per_post"] == 4


def test_iso_times_and_bad_time_named():
    built = vote_pairs([comment("a", 3, "2024-01-01T00:00:00Z"),
                        comment("b", 9, "2024-01-01T00:01:00+00:00")])
    assert pairs_of(built) == [("b", "a")] and built.rows[0]["seconds_difference"] == 60
    with pytest.raises(DataError, match=r"rows, row 1, field 'created': not a time"):
        vote_pairs([comment("a", 3, "yesterday")])


def test_reddit_json_lines_adapter():
    stream = [
        {"id": "c1", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "Use oil.", "score": 4,
         "created_utc": 100, "author": "u1"},
        {"id": "abc", "title": "Seasoning?", "selftext": "New pan.", "score": 25,
         "created_utc": 50, "author": "op", "over_18": False},
        {"id": "c2", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "Bake it thin.",
         "score": 20, "created_utc": 300, "author": "u2"},
        {"id": "c3", "link_id": "t3_abc", "parent_id": "t1_c1", "body": "Agreed", "score": 50,
         "created_utc": 400, "author": "u3"},
        {"id": "c4", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "Mine.", "score": 60,
         "created_utc": 500, "author": "op"},
    ]
    built = vote_pairs(reddit_rows(stream))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in built.rows] == [
        ("Seasoning?\n\nNew pan.", "Bake it thin.", "Use oil.")]
    assert built.report.dropped["comment: reply to a comment"] == 1
    assert built.report.dropped["comment: post author's comment"] == 1


# --- scored -----------------------------------------------------------------------------------

WIDE = [{"prompt": "Q1", "responses": ["r0", "r1", "r2", "r3"], "scores": [3, 9, 1, 5]},
        {"prompt": "Q2", "responses": [{"response": "s0", "score": 4},
                                       {"response": "s1", "score": 4}]},
        {"prompt": "Q3", "responses": ["t0", "t1"], "scores": [7, None]}]


def test_best_worst_and_ties_and_missing_scores():
    built = pair_scored(scored_groups(WIDE))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in built.rows] == [("Q1", "r1", "r2")]
    assert (built.rows[0]["chosen_index"], built.rows[0]["rejected_index"]) == (1, 2)
    d = built.report.dropped
    assert d["pair: tied scores"] == 1 and d["response: missing score"] == 1
    assert d["prompt: fewer than 2 scored responses"] == 1


def test_all_pairs_with_a_margin():
    built = pair_scored(scored_groups(WIDE[:1]), ScoredSettings("all_pairs", margin=2.5))
    # scores r0 3, r1 9, r2 1, r3 5: r3-r0 and r0-r2 differ by 2 < 2.5
    assert sorted((r["chosen"], r["rejected"]) for r in built.rows) == [
        ("r1", "r0"), ("r1", "r2"), ("r1", "r3"), ("r3", "r2")]
    assert built.report.dropped["pair: score difference below margin 2.5"] == 2


def test_best_random_is_seeded_per_prompt_and_never_a_tie():
    rows = [{"prompt": "Q", "responses": ["a", "b", "c", "d"], "scores": [9, 9, 2, 5]}]
    picks = {pair_scored(scored_groups(rows), ScoredSettings("best_random", seed=s)).rows[0][
        "rejected"] for s in range(20)}
    assert picks == {"c", "d"}  # never "b" (tied with the best "a")
    one = pair_scored(scored_groups(rows), ScoredSettings("best_random", seed=3)).rows
    assert one == pair_scored(scored_groups(rows), ScoredSettings("best_random", seed=3)).rows


def test_long_format_groups_by_prompt_id():
    rows = [{"prompt_id": "x", "prompt": "Q", "response": "a", "score": 1},
            {"prompt_id": "x", "prompt": "Q", "response": "b", "score": 3},
            {"prompt_id": "y", "prompt": "Q", "response": "c", "score": 2}]
    built = pair_scored(scored_groups(rows))
    assert [(r["prompt_id"], r["chosen"], r["rejected"]) for r in built.rows] == [("x", "b", "a")]


# --- failures ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,finished,expected", [
    ("", None, ["empty"]),
    ("  ...  ", None, ["empty"]),
    ("Paris is the capital of France.", None, []),
    ("Paris is the capital of", None, ["truncation"]),
    ("Paris is the capital of France.", False, ["truncation"]),
    ("it is what it is, what it is, what it is, what it is.", None, ["repetition"]),
    ("As an AI, I cannot share opinions.", None, ["refusal"]),
    ("Париж является столицей Франции.", None, ["off_language"]),
    ("Lorem ipsum dolor sit amet consectetur adipiscing elit sed.", None, ["off_language"]),
])
def test_each_detector(text, finished, expected):
    assert detect_failures(text, finished) == expected


def test_failure_pairs_reference_beats_failing_outputs():
    rows = [{"prompt": "Capital of France?", "reference": "Paris.",
             "outputs": ["Paris.", "I'm sorry, but I can't help.", "paris paris paris paris paris "
                         "paris paris", "I'm sorry, but I can't help."]}]
    built = failure_pairs(rows)
    assert [(r["rejected"], r["failure"]) for r in built.rows] == [
        ("I'm sorry, but I can't help.", "refusal"),
        ("paris paris paris paris paris paris paris", "repetition,truncation")]
    assert built.report.dropped == {"output: no failure detected": 1,
                                    "output: duplicate of an earlier output": 1}
    only = failure_pairs(rows, FailureSettings(detectors=("repetition",)))
    assert [r["failure"] for r in only.rows] == ["repetition"]
    with pytest.raises(ValueError, match="unknown detectors"):
        FailureSettings(detectors=("loops",))


# --- one number parser for every reader -------------------------------------------------------
# Forum exports write "1.2k"; a score that is there but is not a number is counted, never an
# exception, in every reader (comment rows, Reddit JSON, the threads table, scored rows).

def test_comment_rows_take_suffixed_scores_and_count_what_is_not_a_number():
    rows = [comment("a", "1.2k", 500, post_score="2k"), comment("b", "500", 100, post_score="2k"),
            comment("c", "lots", 100, post_score="2k"), comment("d", True, 100, post_score="2k")]
    built = vote_pairs(rows)
    assert pairs_of(built) == [("a", "b")] and built.rows[0]["score_chosen"] == 1200.0
    assert built.rows[0]["score_ratio"] == pytest.approx(2.4)
    assert built.report.dropped["comment: score is not a number"] == 2


def test_post_score_not_a_number_is_counted():
    built = vote_pairs([comment("a", 30, 500, post_score="n/a"), comment("b", 3, 100,
                                                                       post_score="n/a")])
    assert built.rows == [] and built.report.dropped["post: post score is not a number"] == 1


def test_reddit_json_takes_suffixed_scores():
    stream = [{"id": "abc", "title": "Seasoning?", "selftext": "", "score": "1.5k",
               "created_utc": 50},
              {"id": "c1", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "Use oil.",
               "score": "2.5k", "created_utc": 300},
              {"id": "c2", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "Hm.",
               "score": "1,000", "created_utc": 100},
              {"id": "c3", "link_id": "t3_abc", "parent_id": "t3_abc", "body": "?",
               "score": "[hidden]", "created_utc": 100}]
    built = vote_pairs(reddit_rows(stream))
    assert [(r["chosen"], r["rejected"], r["score_chosen"]) for r in built.rows] == [
        ("Use oil.", "Hm.", 2500.0)]
    assert built.report.dropped["comment: score is not a number"] == 1


def test_threads_table_takes_suffixed_scores_and_votes():
    from dpokit.data.builders import threads_rows

    base = {"thread_id": "t", "thread_text": "Q?", "thread_score": "1k", "parent_id": ""}
    rows = threads_rows([{**base, "reply_id": "r1", "reply_text": "A.", "score": "3.1k",
                          "created": "9"},
                         {**base, "reply_id": "r2", "reply_text": "B.", "upvotes": "1.1k",
                          "downvotes": "100", "created": "5"},
                         {**base, "reply_id": "r3", "reply_text": "C.", "upvotes": "many",
                          "created": "5"},
                         {**base, "reply_id": "r4", "reply_text": "D.", "score": "lots",
                          "created": "5"}])
    assert rows[1].values["score"] == 1000.0  # up - down
    built = vote_pairs(rows)
    assert pairs_of(built) == [("r1", "r2")] and built.rows[0]["score_chosen"] == 3100.0
    assert built.report.dropped["comment: score is not a number"] == 2  # "many", "lots"


def test_scored_rows_take_suffixed_scores_and_count_what_is_not_a_number():
    built = pair_scored(scored_groups([
        {"prompt": "Q", "responses": ["x", "y", "z"], "scores": ["1.5k", "900", "high"]}]))
    assert [(r["chosen"], r["rejected"], r["score_chosen"]) for r in built.rows] == [
        ("x", "y", 1500.0)]
    assert built.report.dropped["response: score is not a number"] == 1
    long = pair_scored(scored_groups([{"prompt": "Q", "response": "a", "score": "2k"},
                                      {"prompt": "Q", "response": "b", "score": 7}]))
    assert [(r["chosen"], r["rejected"]) for r in long.rows] == [("a", "b")]


def test_an_iso_time_without_a_zone_is_utc_whatever_the_machines_zone(monkeypatch):
    """A naive ISO time is read as UTC, not as the local time of the machine that builds."""
    import time

    from dpokit.data.builders.votes import parse_time
    from dpokit.data.io import Record

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        row = Record("rows", 1, {})
        assert parse_time("2024-01-01T00:00:00", row) == 1704067200.0
        assert parse_time("2024-01-01T00:00:00Z", row) == 1704067200.0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_reddit_parent_with_a_prefix_and_no_id_is_not_a_top_level_comment():
    stream = [{"id": "abc", "title": "Q?", "selftext": "", "score": 50, "created_utc": 1},
              {"id": "c1", "link_id": "t3_abc", "parent_id": "t1_", "body": "odd", "score": 9,
               "created_utc": 5}]
    [row] = reddit_rows(stream)
    assert row.values["parent_id"] == "t1_"  # kept as read: it names no post
