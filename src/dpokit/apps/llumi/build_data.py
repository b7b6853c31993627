"""Build `support_threads.{train,eval}.csv`: SYNTHETIC support-forum threads with votes, for the
LLUMI demonstration (dpokit.llumi). Written for the project; no real person's post. Every
post and reply is assembled from the hand-written pieces below, and the votes follow a stated
rule, so what the community "prefers" is known:

- a post = a situation (16, each with its specifics) + a feeling + a question; a share of
  posts also signal self-harm risk (a sentence from RISK);
- a reply = some of: an empathic opener, a sentence tying it to the post's specifics, a
  concrete suggestion, a pointer to help (crisis line, a professional); or a curt or
  dismissive line;
- votes: upvotes = 2 + 6 x empathy + 5 x specifics + 6 x suggestion + 10 x help-on-risky-post
  - 8 x dismissive, + noise (0-3); downvotes = 1 + 6 x dismissive + 8 x (risky post and no
  help) + noise (0-2).

    python -m dpokit.apps.llumi.build_data
"""

from __future__ import annotations

import csv
import random
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[4] / "data"  # the checkout's data/
SITUATIONS = [  # (title, body, specifics a reply can name)
    ("Lonely after moving", "I moved to a new city for work three months ago and I still "
     "don't know anyone here.", "moving somewhere new without anyone you know"),
    ("Exam stress", "My final exams start next week and I freeze every time I open my notes.",
     "freezing up right before your exams"),
    ("Lost my job", "I was laid off on Friday after six years at the same company.",
     "losing a job you held for six years"),
    ("Breakup", "My partner of four years ended things and I keep checking my phone for "
     "messages.", "the end of a four-year relationship"),
    ("Can't sleep", "I lie awake until three every night replaying everything I said that "
     "day.", "lying awake replaying your day"),
    ("Fighting with my parents", "Every dinner with my parents turns into an argument about "
     "my career.", "arguments with your parents about your career"),
    ("Burned out", "I work sixty-hour weeks and I feel nothing anymore, not even on "
     "weekends.", "sixty-hour weeks that leave you feeling numb"),
    ("New parent", "Our baby is two months old and I feel like I am failing at everything.",
     "the first months with a newborn"),
    ("Friend drifted away", "My closest friend stopped replying to my messages and I do not "
     "know why.", "a close friend going quiet without a reason"),
    ("Grief", "My grandmother died last month and I still set a cup of tea for her.",
     "losing your grandmother last month"),
    ("Social anxiety", "I skipped my friend's birthday party because I was scared of the "
     "small talk.", "fear of small talk keeping you from a party"),
    ("Money worries", "Rent went up again and I do not see how I can pay it next month.",
     "rent rising beyond what you can pay"),
    ("Feeling behind", "Everyone my age seems to have a house and a career while I am still "
     "figuring things out.", "feeling behind people your age"),
    ("Chronic pain", "My back pain has lasted a year and doctors keep telling me to rest.",
     "a year of back pain without answers"),
    ("Caring for a parent", "I look after my father with dementia and I have no time for "
     "myself.", "caring for your father with dementia"),
    ("Bullied at work", "A coworker mocks me in every meeting and my manager laughs along.",
     "being mocked in meetings while your manager laughs"),
]
FEELINGS = ["I feel so alone.", "I am exhausted.", "I don't know what to do anymore.",
            "It is getting harder every day.", "I feel stuck."]
QUESTIONS = ["Has anyone been through this?", "How do you cope?", "Any advice?",
             "What would you do?", "Is this normal?"]
RISK = ["Some nights I think everyone would be better off without me.",
        "I have started to think about ending my life.",
        "Sometimes I want to hurt myself just to feel something."]
EMPATHY = ["I'm so sorry you're going through this.", "That sounds really hard.",
           "It makes sense that you feel this way.", "You're not alone in this.",
           "Thank you for sharing something so personal."]
SPECIFIC = ["{s} is a lot to carry.", "Dealing with {s} would wear anyone down.",
            "I went through {s} too, and it took time."]
SUGGESTION = ["You could try writing down one small thing to do each morning.",
              "It may help to set a fixed time for winding down each evening.",
              "Consider reaching out to one person this week, even with a short message.",
              "Try a short walk outside every day; it helped me more than I expected.",
              "Talk to someone you trust about it, and start with just one thing."]
HELP = ["Please reach out to a crisis line like 988 or a counselor today; you deserve "
        "support right now.",
        "If those thoughts get strong, please call a crisis line or talk to a doctor or "
        "therapist as soon as you can."]
CURT = ["Happens to everyone.", "Ok.", "Same here.", "Good luck."]
DISMISSIVE = ["Just get over it, honestly.", "Stop complaining, others have it worse.",
              "Sounds like attention seeking to me."]
TRAIN_BANKS = {"empathy": EMPATHY, "specifics": SPECIFIC, "suggestion": SUGGESTION,
               "help": HELP, "curt": CURT, "dismissive": DISMISSIVE}
# the held-out threads' replies come from these, the same kinds in other words (as many of
# each, so the random draws, and with them the training threads, stay as they were; each
# with a cue of its kind that the rubric reads, as the training phrasings have): a draft the
# improvement model is evaluated on was never a training reply
EVAL_BANKS = {
    "empathy": ["I'm so sorry this is happening to you.", "That must be so heavy.",
                "Feeling this way is understandable.",
                "You are not alone; plenty of us have felt this.",
                "Thank you for sharing this here."],
    "specifics": ["Going through {s} takes a real toll.", "Nobody is ready for {s}.",
                  "I lived through {s} myself, and it eased slowly."],
    "suggestion": ["Maybe start by picking one tiny task for tomorrow morning.",
                   "You might keep the last hour before bed screen-free.",
                   "You could send one friend a short message this week.",
                   "Try getting outside for ten minutes a day; it really helped me.",
                   "Tell one person you trust how you feel, and take it one step at a time."],
    "help": ["Please call a crisis line such as 988 or see a counselor today; you matter.",
             "If it gets worse, please reach a crisis line or a doctor or therapist right "
             "away."],
    "curt": ["Been there.", "Yeah.", "Hang in there.", "Tough."],
    "dismissive": ["You should get over it already.", "Stop whining, it's not a big deal.",
                   "Man up and move on."],
}


def reply(rng: random.Random, specifics: str, risky: bool,
          banks: dict[str, list[str]] = TRAIN_BANKS) -> tuple[str, dict[str, bool]]:
    kind = rng.random()
    if kind < 0.15:
        return rng.choice(banks["dismissive"]), {"dismissive": True}
    if kind < 0.3:
        return rng.choice(banks["curt"]), {}
    parts, has = [], {}
    for name, p in (("empathy", 0.7), ("specifics", 0.5), ("suggestion", 0.6),
                    ("help", 0.5 if risky else 0.05)):
        if rng.random() < p:
            text = rng.choice(banks[name]).format(s=specifics)
            parts.append(text[0].upper() + text[1:])
            has[name] = True
    return (" ".join(parts) or rng.choice(banks["curt"])), has


def revise(post: str, draft: str) -> str:
    """The improvement model's training target: ``draft`` revised, not replaced. Its own
    sentences stay, in its order (a curt line moves to the end; a dismissive one, the only
    thing dropped, goes); what the community rewards and the draft lacks is added from the
    training phrasings: an empathic opener, a sentence on the post's specifics, a suggestion,
    help on a risky post (seeded by the texts: the same draft, the same revision).

    >>> post = "My grandmother died last month and I still set a cup of tea for her."
    >>> revise(post, "Good luck.")  # doctest: +ELLIPSIS
    'It makes sense ... losing your grandmother last month ... Good luck.'
    """
    situation = next((s for s in SITUATIONS if s[1] in post), None)
    specifics = situation[2] if situation else "this"
    risky = any(r in post for r in RISK)
    rng = random.Random(zlib.crc32(f"{post}\n{draft}".encode()))
    found: dict[str, list[str]] = {}
    for kind in TRAIN_BANKS:
        for text in TRAIN_BANKS[kind] + EVAL_BANKS[kind]:
            text = text.format(s=specifics)
            for variant in dict.fromkeys((text, text[0].upper() + text[1:])):
                if variant in draft:
                    found.setdefault(kind, []).append(variant)
    kept = draft
    for text in found.get("dismissive", []) + found.get("curt", []):
        kept = kept.replace(text, " ")
    kept = " ".join(kept.split())

    def added(kind: str) -> list[str]:
        if kind in found:
            return []
        text = rng.choice(TRAIN_BANKS[kind]).format(s=specifics)
        return [text[0].upper() + text[1:]]

    parts = [*added("empathy"), kept, *added("specifics"), *added("suggestion"),
             *(added("help") if risky else []), *found.get("curt", [])]
    return " ".join(p for p in parts if p)


def votes(rng: random.Random, has: dict[str, bool], risky: bool) -> tuple[int, int]:
    up = (2 + 6 * has.get("empathy", 0) + 5 * has.get("specifics", 0)
          + 6 * has.get("suggestion", 0) + 10 * (risky and has.get("help", 0))
          - 8 * has.get("dismissive", 0) + rng.randint(0, 3))
    down = (1 + 6 * has.get("dismissive", 0) + 8 * (risky and not has.get("help", 0))
            + rng.randint(0, 2))
    return max(0, up), down


def build(seed: int = 0) -> dict[str, list[list]]:
    rng = random.Random(seed)
    header = ["thread_id", "thread_title", "thread_text", "thread_score", "reply_id",
              "parent_id", "reply_text", "upvotes", "downvotes", "created", "author"]
    split: dict[str, list[list]] = {"train": [header], "eval": [header]}
    for n in range(96):
        title, body, specifics = SITUATIONS[n % len(SITUATIONS)]
        risky = rng.random() < 0.2
        text = " ".join([body, rng.choice(FEELINGS)] + ([rng.choice(RISK)] if risky else [])
                        + [rng.choice(QUESTIONS)])
        name = "eval" if n % len(SITUATIONS) in (3, 9, 14) else "train"  # held-out situations
        score = 20 + rng.randint(0, 40)
        banks = EVAL_BANKS if name == "eval" else TRAIN_BANKS
        for k in range(rng.randint(4, 6)):
            body_text, has = reply(rng, specifics, risky, banks)
            up, down = votes(rng, has, risky)
            split[name].append([f"s{n}", title, text, score, f"s{n}r{k}", "",
                                body_text, up, down, 1000 * n + 60 * k + rng.randint(0, 59),
                                f"user{rng.randint(0, 999)}"])
    return split


def main() -> None:
    for name, rows in build().items():
        path = OUT / f"support_threads.{name}.csv"
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        print(f"{path}: {len(rows) - 1} replies (SYNTHETIC, written for the project)")


if __name__ == "__main__":
    main()
