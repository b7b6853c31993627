"""Instruction-hierarchy data for GW-DPO: the program checks on known texts, the builder's
samples, the rendering by level, the adherence matrix on known answers, and the rows feeding
the gravity-weighted losses."""

from __future__ import annotations

import pytest
from helpers import records

from dpokit.apps.gw_dpo.hierarchy import (
    CONSTRAINTS,
    LEVELS,
    TASKS,
    Message,
    build_samples,
    evaluate_answers,
    is_refusal,
    preference_row,
    render,
)
from dpokit.data.text import TokenizeSettings, build_pairs


def test_constraint_checks_on_known_texts():
    c = CONSTRAINTS
    assert c["upper"].check("RAIN, AGAIN.") and not c["upper"].check("Rain")
    assert c["lower"].check("rain, again.") and not c["lower"].check("123")
    assert c["list"].check("- one\n- two") and not c["list"].check("- one")
    assert c["one_line"].check("One line.") and not c["one_line"].check("a\nb")
    assert c["short"].check("a b c") and not c["short"].check(" ".join(["w"] * 13))
    assert c["long"].check(" ".join(["w"] * 30)) and not c["long"].check("too short")
    assert c["keyword"].check("Indeed it is, indeed.") and not c["keyword"].check("Indeed.")
    assert c["no_keyword"].check("It is.") and not c["no_keyword"].check("INDEED")
    for name, constraint in c.items():  # every rewrite complies; opposites contradict
        _, base = TASKS[0]
        assert constraint.check(constraint.comply(base)), name
        assert not CONSTRAINTS[constraint.opposite].check(constraint.comply(base)), name
    assert is_refusal("I'm sorry, but I can't help.") and is_refusal("  ")
    assert not is_refusal("Sorry to hear the rain is back.")


def test_builder_samples_conflicts_benign_and_aligned():
    samples = build_samples(TASKS[:2], seed=0)
    conflicts = [s for s in samples if s.kind == "conflict"]
    assert len(conflicts) == 2 * 10  # every level pair i < j once per task
    assert {(s.level_obeyed, s.level_overridden) for s in conflicts} == {
        (i, j) for i in range(5) for j in range(i + 1, 5)}
    for s in samples:
        check = CONSTRAINTS[s.constraint].check
        assert check(s.chosen) and not (check(s.rejected) and not is_refusal(s.rejected))
        if s.kind != "conflict":
            assert s.level_obeyed == s.level_overridden  # no gap: plain DPO
    assert {s.kind for s in samples} == {"conflict", "benign", "aligned"}
    every = build_samples(TASKS[:1], every_constraint=True, benign_per_task=0,
                          aligned_per_task=0)
    assert len(every) == 10 * len(CONSTRAINTS)
    assert build_samples(TASKS[:2], seed=0)[5].chosen == samples[5].chosen  # seeded


def test_render_puts_each_level_in_its_turn():
    turns = render([Message(0, "A."), Message(3, "B."), Message(1, "C.")], "Do it.")
    assert turns[0] == {"role": "system", "content": "[platform] A.\n[system] C."}
    assert turns[1]["content"] == "[tool output] B.\nTask: Do it."
    assert render([Message(4, "X.")], "T.")[0]["role"] == "user" and LEVELS[4] in \
        render([Message(4, "X.")], "T.")[0]["content"]


def test_adherence_matrix_on_known_answers():
    samples = build_samples(TASKS[:3], seed=1)
    perfect = evaluate_answers(samples, [s.chosen for s in samples])
    assert perfect.macro == 1.0 and perfect.over_refusal == 0.0 and perfect.aligned_utility == 1
    assert perfect.adherence[0][4] == 1.0 and perfect.adherence[4][0] is None
    obeys_lower = evaluate_answers(samples, [s.rejected if s.kind == "conflict" else s.chosen
                                             for s in samples])
    assert obeys_lower.macro == 0.0 and obeys_lower.over_refusal == 0.0
    refuses = evaluate_answers(samples, ["I cannot comply."] * len(samples))
    assert refuses.macro == 0.0 and refuses.over_refusal == 1.0 and refuses.aligned_utility == 0
    assert refuses.benign_non_compliance == 1.0
    # a benign answer that fails its constraint without refusing is non-compliance, not a
    # refusal (the two figures used to be one)
    answers = [CONSTRAINTS[CONSTRAINTS[s.constraint].opposite].comply(s.chosen)
               if s.kind == "benign" else s.chosen for s in samples]
    missed = [not CONSTRAINTS[s.constraint].check(a)
              for s, a in zip(samples, answers, strict=True) if s.kind == "benign"]
    fails = evaluate_answers(samples, answers)
    assert fails.over_refusal == 0.0 and sum(missed) >= 3
    assert fails.benign_non_compliance == pytest.approx(sum(missed) / len(missed))
    # one cell half right
    cell = [n for n, s in enumerate(samples) if (s.level_obeyed, s.level_overridden) == (1, 3)]
    answers = [s.chosen for s in samples]
    answers[cell[0]] = samples[cell[0]].rejected
    assert evaluate_answers(samples, answers).adherence[1][3] == pytest.approx(
        1 - 1 / len(cell))


def test_rows_carry_the_levels_the_gravity_losses_read(tokenizer):
    rows = [preference_row(s) for s in build_samples(TASKS[:1], benign_per_task=1,
                                                     aligned_per_task=0)]
    pairs = build_pairs(records(rows), tokenizer, TokenizeSettings(
        max_length=512, max_prompt_length=384, extra_columns=("level_obeyed",
                                                              "level_overridden")))
    assert len(pairs) == len(rows)
    assert pairs[0].extras == {"level_obeyed": rows[0]["level_obeyed"],
                               "level_overridden": rows[0]["level_overridden"]}


def test_level_delimiter_tokens_are_single_tokens_and_resize_the_model(tokenizer):
    import copy

    import torch
    from conftest import make_tiny_llama

    from dpokit.apps.gw_dpo.hierarchy import add_level_tokens

    tok = copy.deepcopy(tokenizer)
    model = make_tiny_llama(len(tok))
    tokens = add_level_tokens(tok, model)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(tokenizer) + 5
    text = render([Message(0, "Be brief."), Message(2, "Be long.")], "Go.", labels=tokens)
    assert text[0]["content"] == "<|level_0|> Be brief."
    ids = tok(text[1]["content"])["input_ids"]
    assert tok.convert_tokens_to_ids("<|level_2|>") in ids  # one id, not split
    weight = model.get_input_embeddings().weight  # each new row where its level's name is
    name = tok(" tool output", add_special_tokens=False)["input_ids"]
    assert torch.equal(weight[tok.convert_tokens_to_ids("<|level_3|>")], weight[name].mean(0))
    assert set(tokenizer.all_special_tokens) <= set(tok.all_special_tokens)  # kept


def test_text_tags_as_level_tokens_equal_rendering_with_tokens():
    from dpokit.apps.gw_dpo.hierarchy import LEVEL_TOKENS, with_level_tokens

    for s in build_samples(TASKS[:2], seed=3):
        assert with_level_tokens(render(s.messages, s.task)) == render(
            s.messages, s.task, labels=LEVEL_TOKENS)


def test_every_prompt_token_gets_its_levels_segment(tokenizer):
    """The ISE arm's wiring: a prompt rendered with level tokens, through the chat template,
    read by the segment lookup: each level's text in that level's segment (level i: segment
    i + 1), the task in the user's, the template's turn starts and the answer in segment 0."""
    import copy

    import torch

    from dpokit.apps.gw_dpo.hierarchy import LEVEL_TOKENS, add_level_tokens
    from dpokit.policies.causal_lm.segments import SegmentSpec, segment_ids, token_lookup

    tok = copy.deepcopy(tokenizer)
    add_level_tokens(tok)
    turns = render([Message(0, "Be brief."), Message(3, "Be long.")], "Go.",
                   labels=LEVEL_TOKENS)
    text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    ids = tok(text + "ok", add_special_tokens=False)["input_ids"]
    lookup = token_lookup(tok, SegmentSpec(LEVEL_TOKENS, ("<|im_start|>",)), len(tok))
    seg = segment_ids(torch.tensor([ids]), lookup)[0].tolist()
    pieces = [tok.decode([i]) for i in ids]

    def segment_of(word: str) -> set[int]:
        at = "".join(pieces).index(word)
        ends = [sum(len(p) for p in pieces[:k + 1]) for k in range(len(pieces))]
        first = next(k for k, e in enumerate(ends) if e > at)
        last = next(k for k, e in enumerate(ends) if e >= at + len(word))
        return set(seg[first:last + 1])

    assert segment_of("Be brief.") == {1} and segment_of("Be long.") == {4}
    assert segment_of("Task: Go.") == {3}
    assert seg[-1] == 0 and seg[0] == 0  # the answer; the first turn's start
