"""Pairs from community votes: the rules of the Stanford Human Preferences dataset (SHP).

Input: one row per comment (``post_id``, ``post`` or ``title`` + ``body``, ``post_score``,
``comment_id``, ``parent_id``, ``text``, ``score``, ``created``; optional ``author``,
``post_author``, ``distinguished``, ``edited``, ``over_18``). For two top-level comments A and B
of one post, A is preferred to B when (defaults, all in :class:`VoteRules`):

- A was created no earlier than B (``order="later_preferred"``): a comment written later that
  still scores higher was preferred despite less time to collect votes; an earlier one's higher
  score may be mere visibility. SHP's card states its rule 1 as "A was written no later than
  B" while its summary, its rule 2 ("despite being written later") and its field
  ``seconds_difference`` ("how many seconds after the less preferred comment the more
  preferred one was created", always >= 0) all say the preferred comment is the later one;
  this follows the latter. ``order="earlier_preferred"`` reads rule 1 literally; ``"any"``
  ignores time. Equal timestamps satisfy every order.
- score(A) >= ``min_ratio`` x score(B) (2: exactly twice counts), and score(A) > score(B);
- both comments score >= ``min_comment_score`` (2) and the post >= ``min_post_score`` (10);
- neither comment is by a deleted author, a moderator (``distinguished``) or the post's
  author, nor deleted/removed text, nor edited (votes may be for another text); the post is
  not ``over_18``; replies to comments are not top-level and are dropped;
- at most ``max_comments_per_post`` (50) comments of a post are considered: the highest
  scoring (ties: earliest, then id), so the cap never favours low scores.

Scores that are missing are dropped ("comment: missing score"); zero or negative scores can
only pass a ``min_comment_score`` <= 0, and then a pair whose lower score is not positive has
no ratio and is dropped ("pair: non-positive score"). Ties never make a pair.

    >>> rows = [dict(post_id="p", post="Q?", post_score=20, comment_id=c, parent_id="",
    ...              text=t, score=s, created=ts) for c, t, s, ts in
    ...         [("a", "early", 3, 0), ("b", "late and good", 9, 60)]]
    >>> built = vote_pairs(rows)
    >>> [(r["chosen_id"], r["rejected_id"], r["score_ratio"]) for r in built.rows]
    [('b', 'a', 3.0)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from ...core.types import AT_LEAST_ONE, Domain
from ..io import DataError, Record, as_number, score_problem
from .common import BuildReport, BuiltPairs, as_record, option

DELETED_AUTHORS = ("[deleted]", "[removed]", "")
DELETED_TEXTS = ("[deleted]", "[removed]")
Order = Literal["later_preferred", "earlier_preferred", "any"]


@dataclass(frozen=True)
class VoteRules:
    """The SHP rules, each threshold a field (see the module docstring)."""

    min_ratio: float = option(2.0, "the preferred comment's score is at least this many times "
                              "the other's", Domain(1.0, low_inclusive=True))
    min_comment_score: float = option(2.0, "comments scoring less are dropped", Domain())
    min_post_score: float = option(10.0, "posts scoring less are dropped", Domain())
    max_comments_per_post: int = option(50, "the highest-scoring comments of a post considered",
                                        AT_LEAST_ONE)
    order: Order = option("later_preferred", "later_preferred (SHP's intent), "
                          "earlier_preferred (its rule 1 read literally), any")
    drop_edited: bool = option(True, "drop edited comments (their votes may be for another text)")
    drop_over_18: bool = option(True, "drop over-18 posts")
    drop_moderators: bool = option(True, "drop comments marked distinguished (moderators, admins)")
    drop_post_author: bool = option(True, "drop the post author's own comments")
    deleted_authors: tuple[str, ...] = DELETED_AUTHORS
    max_pairs_per_post: int | None = option(None, "pairs kept per post at most (default: all)",
                                            AT_LEAST_ONE)


@dataclass(frozen=True)
class _Comment:
    id: str
    text: str
    score: float
    created: float  # epoch seconds


@dataclass
class _Post:
    id: str
    text: str
    score: float | None
    over_18: bool = False
    comments: list[_Comment] = field(default_factory=list)


def parse_time(value: Any, record: Record, name: str = "created") -> float:
    """Epoch seconds (number or digit string) or ISO 8601 (``Z`` or an offset; naive = UTC)."""
    if isinstance(value, bool) or value is None or value == "":
        raise DataError(record.source, record.row, name, "missing or not a time")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(record.source, record.row, name, f"not a time: {value!r} (epoch seconds "
                        f"or ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _flag(value: Any) -> bool:
    """Reddit's ``edited`` is False or a timestamp; CSV gives strings."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "none")
    return bool(value)


def _post_text(v: Mapping[str, Any]) -> str:
    if v.get("post"):
        return str(v["post"]).strip()
    title, body = str(v.get("title") or "").strip(), str(v.get("body") or "").strip()
    return f"{title}\n\n{body}" if title and body else title or body


def _comment_reason(v: Mapping[str, Any], score: float | None, post_id: str,
                    rules: VoteRules) -> str | None:
    """Why a comment (its ``score`` parsed by :func:`as_number`) is not used, or None."""
    parent = str(v.get("parent_id") or "")
    if parent not in ("", post_id, f"t3_{post_id}"):
        return "reply to a comment"
    author = v.get("author")
    if author is not None and str(author) in rules.deleted_authors:
        return "deleted author"
    text = str(v.get("text") or "").strip()
    if not text or text in DELETED_TEXTS:
        return "deleted or empty text"
    if rules.drop_moderators and _flag(v.get("distinguished")):
        return "moderator"
    post_author = v.get("post_author")
    if (rules.drop_post_author and author not in (None, "") and post_author not in (None, "")
            and str(author) == str(post_author)):
        return "post author's comment"
    if rules.drop_edited and _flag(v.get("edited")):
        return "edited"
    problem = score_problem(score)
    if problem:
        return problem
    if score < rules.min_comment_score:
        return f"score below {rules.min_comment_score:g}"
    return None


def _group(records: list[Record], rules: VoteRules, report: BuildReport) -> list[_Post]:
    posts: dict[str, _Post] = {}
    seen: set[tuple[str, str]] = set()
    for rec in records:
        v = rec.values
        for name in ("post_id", "comment_id", "text", "created"):
            if name not in v:
                raise DataError(rec.source, rec.row, name, f"missing column: {name!r} "
                                f"(columns present: {sorted(v)})")
        post_id, comment_id = str(v["post_id"]), str(v["comment_id"])
        post = posts.get(post_id)
        if post is None:
            post = posts[post_id] = _Post(post_id, _post_text(v), as_number(v.get("post_score")),
                                          _flag(v.get("over_18")))
        if (post_id, comment_id) in seen:
            report.drop("comment: duplicate comment_id")
            continue
        seen.add((post_id, comment_id))
        created = parse_time(v["created"], rec)
        score = as_number(v.get("score"))
        reason = _comment_reason(v, score, post_id, rules)
        if reason:
            report.drop(f"comment: {reason}")
            continue
        post.comments.append(_Comment(comment_id, str(v["text"]).strip(),
                                      score, created))
    return list(posts.values())


def _post_reason(post: _Post, rules: VoteRules) -> str | None:
    if not post.text:
        return "no post text"
    problem = score_problem(post.score, "post score")
    if problem:
        return problem
    if post.score < rules.min_post_score:
        return f"post score below {rules.min_post_score:g}"
    if rules.drop_over_18 and post.over_18:
        return "over_18"
    if len(post.comments) < 2:
        return "fewer than 2 usable comments"
    return None


def _pair_reason(a: _Comment, b: _Comment, rules: VoteRules) -> str | None:
    """Why A (the higher score) is not preferred to B, or None."""
    if a.score == b.score:
        return "tied scores"
    if rules.order == "later_preferred" and a.created < b.created:
        return "higher score but written earlier (visibility)"
    if rules.order == "earlier_preferred" and a.created > b.created:
        return "higher score but written later"
    if b.score <= 0:
        return "non-positive score"
    if a.score < rules.min_ratio * b.score:
        return f"score ratio below {rules.min_ratio:g}"
    return None


def vote_pairs(rows: Iterable[Record | Mapping[str, Any]],
               rules: VoteRules = VoteRules()) -> BuiltPairs:
    """Preference pairs from comment votes under ``rules`` (SHP's by default); the report
    counts dropped comments, posts and candidate pairs by reason."""
    report = BuildReport()
    records = [as_record(r, i) for i, r in enumerate(rows)]
    out: list[dict[str, Any]] = []
    for post in _group(records, rules, report):
        reason = _post_reason(post, rules)
        if reason:
            report.drop(f"post: {reason}")
            report.drop(f"comment: in a dropped post ({reason})", len(post.comments))
            continue
        ranked = sorted(post.comments, key=lambda c: (-c.score, c.created, c.id))
        report.drop("comment: over max_comments_per_post",
                    max(0, len(ranked) - rules.max_comments_per_post))
        considered = ranked[:rules.max_comments_per_post]
        made = 0
        for i, a in enumerate(considered):  # a scores >= every later b
            for b in considered[i + 1:]:
                reason = _pair_reason(a, b, rules)
                if reason:
                    report.drop(f"pair: {reason}")
                    continue
                if rules.max_pairs_per_post is not None and made >= rules.max_pairs_per_post:
                    report.drop("pair: over max_pairs_per_post")
                    continue
                made += 1
                out.append({
                    "prompt": post.text, "chosen": a.text, "rejected": b.text,
                    "rule": f"votes:{rules.order}", "post_id": post.id,
                    "chosen_id": a.id, "rejected_id": b.id,
                    "score_chosen": a.score, "score_rejected": b.score,
                    "score_ratio": a.score / b.score,
                    "seconds_difference": a.created - b.created,
                })
    report.kept = len(out)
    return BuiltPairs(out, report)


def _strip_prefix(value: Any) -> str:
    text = str(value or "")
    return text[3:] if text[:3] in ("t1_", "t3_") else text


def reddit_rows(records: Iterable[Record | Mapping[str, Any]]) -> list[Record]:
    """Pushshift / Reddit-API JSON lines of submissions and comments (in one stream, in any
    order) as the comment rows :func:`vote_pairs` reads. A submission has ``title``; a comment
    has ``link_id`` (``t3_<post>``) and ``parent_id`` (``t3_`` = top level, ``t1_`` = reply).
    Comments whose submission is absent are kept with an empty post (and then dropped as
    "no post text" by :func:`vote_pairs`)."""
    records = [as_record(r, i) for i, r in enumerate(records)]
    posts: dict[str, dict[str, Any]] = {}
    comments: list[Record] = []
    for rec in records:
        v = rec.values
        if "link_id" in v:
            comments.append(rec)
        elif "title" in v and "id" in v:
            posts[_strip_prefix(v["id"])] = v
        else:
            raise DataError(rec.source, rec.row, None, "neither a submission (id, title) nor a "
                            "comment (link_id, parent_id, body)")
    out = []
    for rec in comments:
        v = rec.values
        post_id = _strip_prefix(v["link_id"])
        post = posts.get(post_id, {})
        parent = str(v.get("parent_id") or "")
        out.append(Record(rec.source, rec.row, {
            "post_id": post_id, "title": post.get("title", ""), "body": post.get("selftext", ""),
            "post_score": post.get("score"), "post_author": post.get("author"),
            "over_18": post.get("over_18", False),
            "comment_id": _strip_prefix(v.get("id")),
            "parent_id": "" if parent.startswith("t3_") else _strip_prefix(parent) or parent,
            "text": v.get("body", ""), "score": v.get("score"),
            "created": v.get("created_utc", v.get("created")), "author": v.get("author"),
            "distinguished": v.get("distinguished"), "edited": v.get("edited", False),
        }))
    return out


def _net_votes(up: Any, down: Any) -> Any:
    """Up minus down votes; None without upvotes; an unreadable count kept as read, so that the
    comment's own check counts it as "score is not a number".

    >>> _net_votes("1.1k", "100"), _net_votes(None, "3"), _net_votes("7", "few")
    (1000.0, None, 'few')
    """
    n_up, n_down = as_number(up), as_number(down)
    if n_up is None:
        return None
    for raw, n in ((up, n_up), (down, n_down)):
        if n is not None and math.isnan(n):
            return raw
    return n_up - (n_down or 0.0)


THREAD_COLUMNS = ("thread_id", "reply_id", "reply_text")


def threads_rows(records: Iterable[Record | Mapping[str, Any]]) -> list[Record]:
    """A generic threads table (CSV, JSON lines ...), one row per reply, as the comment rows
    :func:`vote_pairs` reads. Columns: ``thread_id``, ``thread_title`` and/or
    ``thread_text``, ``thread_score``, ``reply_id``, ``parent_id`` (empty: a top-level
    reply), ``reply_text``, then either ``score`` or ``upvotes`` and ``downvotes`` (score =
    up - down), ``created`` (epoch seconds or ISO time), optional ``author``,
    ``thread_author``. A missing required column is an error naming the row.

    >>> rows = threads_rows([{"thread_id": "t", "thread_text": "Q?", "thread_score": "12",
    ...     "reply_id": "r", "parent_id": "", "reply_text": "A.", "upvotes": "7",
    ...     "downvotes": "2", "created": "5"}])
    >>> rows[0].values["score"], rows[0].values["post"], rows[0].values["parent_id"]
    (5.0, 'Q?', '')
    """
    out = []
    for i, r in enumerate(records):
        rec = as_record(r, i)
        v = rec.values
        for name in THREAD_COLUMNS:
            if name not in v:
                raise DataError(rec.source, rec.row, name, f"missing column: {name!r} "
                                f"(a threads table needs {', '.join(THREAD_COLUMNS)})")
        if "score" in v and v["score"] not in (None, ""):
            score = v["score"]  # parsed once, by vote_pairs (a NaN here would read as missing)
        else:
            score = _net_votes(v.get("upvotes"), v.get("downvotes"))
        title, text = str(v.get("thread_title") or ""), str(v.get("thread_text") or "")
        out.append(Record(rec.source, rec.row, {
            "post_id": str(v["thread_id"]), "post": f"{title}\n\n{text}".strip(),
            "post_score": v.get("thread_score"), "post_author": v.get("thread_author"),
            "comment_id": str(v["reply_id"]), "parent_id": str(v.get("parent_id") or ""),
            "text": v["reply_text"], "score": score, "created": v.get("created"),
            "author": v.get("author"), "over_18": v.get("over_18", False),
            "edited": v.get("edited", False), "distinguished": v.get("distinguished"),
        }))
    return out
