"""Tokenization boundaries for each format, file readers, and every bad-input case."""

import json
import re

import pytest
import torch
from conftest import REPO, write_jsonl

from dpokit.data import DataError, load_records
from dpokit.data.io import Record
from dpokit.data.text import TokenizeSettings, build_pairs, collate_pairs


def rec(values, row=1):
    return Record("mem.jsonl", row, values)


def ids(tok, text, special=False):
    return tok(text, add_special_tokens=special)["input_ids"]


def test_standard_boundary_and_eos(tokenizer):
    pairs = build_pairs(
        [rec({"prompt": "the movie was", "chosen": " wonderful", "rejected": " dull"})],
        tokenizer,
        TokenizeSettings(),
    )
    p = pairs[0]
    assert p.prompt_ids == ids(tokenizer, "the movie was", special=True)
    assert p.chosen_ids == ids(tokenizer, " wonderful") + [tokenizer.eos_token_id]
    assert p.rejected_ids == ids(tokenizer, " dull") + [tokenizer.eos_token_id]
    batch = collate_pairs([p], pad_token_id=tokenizer.pad_token_id)
    # Only completion tokens are scored: exactly the chosen ids for sequence 0, each predicted
    # from the position just before it.
    assert batch.score_target[batch.score_sequence == 0].tolist() == p.chosen_ids
    assert batch.score_target[batch.score_sequence == 1].tolist() == p.rejected_ids
    assert torch.equal(batch.input_ids.view(-1)[batch.score_source + 1], batch.score_target)
    assert batch.input_ids[0, : len(p.prompt_ids)].tolist() == p.prompt_ids


def test_conversational_boundary_uses_chat_template(tokenizer):
    row = {
        "prompt": [{"role": "user", "content": "write one sentence"}],
        "chosen": [{"role": "assistant", "content": "a charming story"}],
        "rejected": [{"role": "assistant", "content": "a dull story"}],
    }
    p = build_pairs([rec(row)], tokenizer, TokenizeSettings())[0]
    prompt_text = "<|im_start|>user\nwrite one sentence<|im_end|>\n<|im_start|>assistant\n"
    assert p.prompt_ids == ids(tokenizer, prompt_text)
    # The template ends the turn with EOS; no second EOS is appended, the trailing newline goes.
    assert p.chosen_ids == ids(tokenizer, "a charming story<|im_end|>")
    assert p.chosen_ids[-1] == tokenizer.eos_token_id
    assert p.chosen_ids.count(tokenizer.eos_token_id) == 1
    decoded = tokenizer.decode(p.prompt_ids + p.chosen_ids)
    assert decoded == prompt_text + "a charming story<|im_end|>"


def test_chat_template_for_strings_matches_conversational(tokenizer):
    s = {"prompt": "write one sentence", "chosen": "a charming story", "rejected": "a dull story"}
    c = {
        "prompt": [{"role": "user", "content": "write one sentence"}],
        "chosen": [{"role": "assistant", "content": "a charming story"}],
        "rejected": [{"role": "assistant", "content": "a dull story"}],
    }
    a = build_pairs([rec(s)], tokenizer, TokenizeSettings(chat_template_for_strings=True))[0]
    b = build_pairs([rec(c)], tokenizer, TokenizeSettings())[0]
    assert (a.prompt_ids, a.chosen_ids, a.rejected_ids) == (
        b.prompt_ids,
        b.chosen_ids,
        b.rejected_ids,
    )


def test_implicit_prompt_text_and_messages(tokenizer):
    row = {"chosen": "the movie was wonderful and moving", "rejected": "the movie was dull"}
    p = build_pairs([rec(row)], tokenizer, TokenizeSettings())[0]
    assert p.prompt_ids == ids(tokenizer, "the movie was", special=True)
    assert p.chosen_ids == ids(tokenizer, " wonderful and moving") + [tokenizer.eos_token_id]
    assert p.rejected_ids == ids(tokenizer, " dull") + [tokenizer.eos_token_id]
    user = {"role": "user", "content": "rate it"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "great"}],
        "rejected": [user, {"role": "assistant", "content": "bad"}],
    }
    q = build_pairs([rec(row)], tokenizer, TokenizeSettings())[0]
    assert q.prompt_ids == ids(
        tokenizer, "<|im_start|>user\nrate it<|im_end|>\n<|im_start|>assistant\n"
    )
    assert q.chosen_ids == ids(tokenizer, "great<|im_end|>")


def test_truncation_keeps_completion_start_and_reports(tokenizer):
    row = {
        "prompt": "the movie",
        "chosen": " was wonderful and the acting was great",
        "rejected": " dull",
    }
    settings = TokenizeSettings(max_length=8, max_prompt_length=4)
    pairs = build_pairs([rec(row)], tokenizer, settings)
    p = pairs[0]
    assert len(p.prompt_ids) + len(p.chosen_ids) == 8
    full = ids(tokenizer, " was wonderful and the acting was great")
    assert p.chosen_ids == full[: 8 - len(p.prompt_ids)]
    assert p.rejected_ids == ids(tokenizer, " dull") + [tokenizer.eos_token_id]  # fits, uncut
    assert pairs.report.truncated_completions == 1
    assert "1 completions truncated" in pairs.report.summary()


BAD_ROWS = [
    ({"prompt": "x", "chosen": "a"}, "rejected", "missing column"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "chosen", "empty field"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "empty field"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "chosen", "not a string"),
    ({"prompt": "x", "chosen": None, "rejected": "b"}, "chosen", "not a string"),
    (
        {"prompt": "x", "chosen": "same", "rejected": "same"},
        "chosen",
        "chosen identical to rejected",
    ),
    (
        {"prompt": "x", "chosen": "a great film", "rejected": "a great  film\n"},
        "chosen",
        "differ only in whitespace",
    ),
    (
        {"prompt": "x", "chosen": "a great film", "rejected": "a great film<|im_end|>"},
        "chosen",
        "but for the end-of-sequence token",
    ),
    (
        {
            "prompt": "the movie was wonderful and the acting was great " * 3,
            "chosen": "a",
            "rejected": "b",
        },
        "prompt",
        "prompt too long",
    ),
]


@pytest.mark.parametrize("values,field,reason", BAD_ROWS)
def test_bad_row_error_names_file_row_field(tokenizer, tmp_path, values, field, reason):
    path = write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, values]
    )
    with pytest.raises(DataError) as info:
        build_pairs(load_records(str(path)), tokenizer, TokenizeSettings(max_prompt_length=16))
    err = info.value
    assert (err.source, err.row, err.field) == (str(path), 2, field)
    assert reason in str(err) and "bad.jsonl, row 2" in str(err)


def test_skip_counts_every_bad_row_by_reason(tokenizer, tmp_path):
    rows = [{"prompt": "ok", "chosen": "a", "rejected": "b"}] + [v for v, _, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    pairs = build_pairs(
        load_records(str(path)),
        tokenizer,
        TokenizeSettings(max_prompt_length=16),
        on_bad_rows="skip",
    )
    assert len(pairs) == 1
    assert sum(pairs.report.skipped.values()) == len(BAD_ROWS)
    assert pairs.report.skipped["empty field"] == 2 and pairs.report.skipped["not a string"] == 2
    summary = pairs.report.summary()
    assert f"{len(BAD_ROWS)} skipped" in summary and "prompt too long" in summary
    assert pairs.report.first_skipped[0].startswith(f"{path}, row 2")


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken.jsonl, row 2: invalid JSON"):
        load_records(str(bad))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match=r"binary.csv, row 1: not UTF-8: byte 0xff"):
        load_records(str(binary))
    parquet = tmp_path / "corrupt.parquet"
    parquet.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="corrupt.parquet: unreadable file"):
        load_records(str(parquet))


ROWS = [
    {"prompt": "p1", "chosen": "a", "rejected": "b"},
    {"prompt": "p2", "chosen": "c", "rejected": "d"},
]


def test_json_csv_parquet_and_datasets_dir_read_the_same(tmp_path):
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}))
    with (tmp_path / "rows.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    for name in ("rows.json", "cols.json", "rows.csv", "rows.parquet", "ds", "rows.jsonl"):
        records = load_records(str(tmp_path / name))
        assert [r.values for r in records] == ROWS, name
        assert [r.row for r in records] == [1, 2]


def test_hub_dataset_offline_fails_clearly():
    with pytest.raises(DataError, match="hub failed|could not load dataset"):
        load_records("no-such-org/no-such-dataset-xyz")


def test_extra_columns_are_validated_and_collated(tokenizer):
    settings = TokenizeSettings(extra_columns=("offset",))
    rows = [
        rec({"prompt": "x", "chosen": "a", "rejected": "b", "offset": 1.5}),
        rec({"prompt": "x", "chosen": "c", "rejected": "d", "offset": 2}, row=2),
    ]
    pairs = build_pairs(rows, tokenizer, settings)
    batch = collate_pairs(pairs.pairs, pad_token_id=0)
    assert batch.extras["offset"].tolist() == [1.5, 2.0]
    with pytest.raises(DataError, match="row 1, field 'offset': missing column"):
        build_pairs([rec({"prompt": "x", "chosen": "a", "rejected": "b"})], tokenizer, settings)
    # a CSV cell is a string: read by the same parser as every score, or refused by name
    csv_row = rec({"prompt": "x", "chosen": "a", "rejected": "b", "offset": " 0.25 "})
    assert build_pairs([csv_row], tokenizer, settings).pairs[0].extras["offset"] == 0.25
    for bad in ("abc", True, "inf"):
        with pytest.raises(DataError, match="row 1, field 'offset': not a finite number"):
            build_pairs([rec({"prompt": "x", "chosen": "a", "rejected": "b", "offset": bad})],
                        tokenizer, settings)
    scores = {"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": "1.5k"}
    with pytest.raises(DataError, match="field 'score_rejected': not a finite number"):
        build_pairs([rec({**scores, "score_rejected": "?"})], tokenizer, settings)
    assert build_pairs([rec({**scores, "score_rejected": "500"})], tokenizer,
                       settings).pairs[0].extras["offset"] > 0


def test_shipped_dataset_is_valid_and_balanced(tokenizer):

    root = REPO / "data"
    train = load_records(str(root / "sentiment_pairs.train.jsonl"))
    held_out = load_records(str(root / "sentiment_pairs.eval.jsonl"))
    assert (len(train), len(held_out)) == (160, 40)
    train_texts = {r.values["chosen"] for r in train}
    assert not train_texts & {r.values["chosen"] for r in held_out}  # unseen sentences
    # every sentence is chosen once and rejected once: no-skill ranking scores exactly 50%
    for records in (train, held_out):
        assert sorted(r.values["chosen"] for r in records) == sorted(
            r.values["rejected"] for r in records
        )
    build_pairs(train + held_out, tokenizer, TokenizeSettings())


# --- files and columns checked, not guessed -------------------------------------------------


def _pairs(tokenizer, path, **kw):
    return build_pairs(load_records(str(path)), tokenizer, TokenizeSettings(), **kw)


def test_utf8_bom_is_stripped_from_csv_and_json(tmp_path, tokenizer):
    csv_file = tmp_path / "excel.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\nthe movie,great,dull\n")
    assert load_records(str(csv_file))[0].values == {"prompt": "the movie", "chosen": "great",
                                                    "rejected": "dull"}
    assert len(_pairs(tokenizer, csv_file)) == 1
    json_file = tmp_path / "bom.jsonl"
    json_file.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert load_records(str(json_file))[0].values["prompt"] == "a"


def test_non_utf8_bytes_name_their_row(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                  b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl, row 2: not UTF-8: byte 0xe9"):
        load_records(str(f))


def test_misspelled_column_is_an_error_naming_both(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "typo.jsonl", [{"promt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"typo.jsonl, row 1, field 'promt': unknown column "
                                        r"'promt'; did you mean 'prompt'"):
        _pairs(tokenizer, f)
    ok = write_jsonl(tmp_path / "extra.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b",
                                                "id": 7, "source": "web"}])
    assert len(_pairs(tokenizer, ok)) == 1  # unrelated extra columns are fine


def test_implicit_prompt_only_when_the_whole_file_has_none(tmp_path, tokenizer):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "the movie was", "chosen": " great", "rejected": " dull"},
        {"chosen": "the movie was great", "rejected": "the movie was dull"}])
    with pytest.raises(DataError, match=r"mixed.jsonl, row 2, field 'prompt': missing column"):
        _pairs(tokenizer, mixed)
    implicit = write_jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": "the movie was great", "rejected": "the movie was dull"}])
    pairs = _pairs(tokenizer, implicit)
    assert "implicit prompt" in pairs.report.summary()


@pytest.mark.parametrize("message,field,reason", [
    ({"role": "usr", "content": "hi"}, "prompt[0].role", "unknown role 'usr'"),
    ({"role": 3, "content": "hi"}, "prompt[0].role", "unknown role 3"),
    ({"role": "user", "content": "   "}, "prompt[0].content", "empty field"),
])
def test_chat_roles_and_content_are_checked(tokenizer, message, field, reason):
    row = {"prompt": [message], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(DataError, match=rf"row 1, field '{re.escape(field)}': {reason}"):
        build_pairs([rec(row)], tokenizer, TokenizeSettings())
    bad_completion = dict(row, prompt=[{"role": "user", "content": "hi"}],
                          chosen=[{"role": "assistant", "content": ""}])
    with pytest.raises(DataError, match=r"field 'chosen\[0\].content': empty field"):
        build_pairs([rec(bad_completion)], tokenizer, TokenizeSettings())


def test_json_file_holding_json_lines_is_read(tmp_path):
    f = tmp_path / "really_lines.json"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
                 '{"prompt": "d", "chosen": "e", "rejected": "f"}\n')
    assert [r.values["prompt"] for r in load_records(str(f))] == ["a", "d"]
    assert [r.row for r in load_records(str(f))] == [1, 2]


@pytest.mark.parametrize("make,reason", [
    (lambda d: (d / "empty.jsonl").write_text("") and None or d / "empty.jsonl", "empty file"),
    (lambda d: (d / "blank.jsonl").write_text("\n\n") and None or d / "blank.jsonl",
     "empty file"),
    (lambda d: d / "no" / "such" / "pairs", "no such file or folder"),
    (lambda d: d / "missing.jsonl", "file not found"),
    (lambda d: (d / "folder").mkdir() or d / "folder", "a folder, but not a dataset"),
    (lambda d: (d / "dir.jsonl").mkdir() or d / "dir.jsonl", "a folder, not a file"),
])
def test_each_unusable_path_gets_its_own_line(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: {reason}"):
        load_records(str(path))


def test_skip_also_skips_rows_that_are_not_json(tmp_path, tokenizer):
    f = tmp_path / "half.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n[1, 2]\n')
    skipped = []
    records = load_records(str(f), bad_rows=skipped)
    pairs = build_pairs(records, tokenizer, TokenizeSettings(), "skip", skipped)
    assert pairs.report.kept == 1 and sum(pairs.report.skipped.values()) == 2
    assert "invalid JSON" in pairs.report.summary() and "2 skipped" in pairs.report.summary()


def test_peek_records_reads_the_first_row_of_every_format_and_names_a_bad_file(tmp_path):
    """What a run opens before any weights: the first row, cheaply, or one line naming the
    file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dpokit.data.io import peek_records

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    write_jsonl(tmp_path / "r.jsonl", rows)
    (tmp_path / "r.csv").write_text("prompt,chosen,rejected\np,a,b\n")
    (tmp_path / "r.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    for name in ("r.jsonl", "r.csv", "r.json", "r.parquet"):
        assert peek_records(str(tmp_path / name)).values == rows[0], name
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "empty.csv").write_text("prompt,chosen,rejected\n")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    for name, reason in (("bad.parquet", "unreadable file"), ("empty.csv", "no rows"),
                         ("blank.jsonl", "no rows"), ("missing.json", "file not found")):
        with pytest.raises(DataError, match=reason):
            peek_records(str(tmp_path / name))
    assert peek_records("Anthropic/hh-rlhf") is None  # a hub name: its own loader tells


def test_jsonl_shards_come_in_name_order_from_a_folder_and_from_a_glob(tmp_path):
    """A streamed run's order is the shards' names' (what a resumed run must see again), not
    the order the file system lists them in."""
    from dpokit.data.io import jsonl_shards

    names = [f"shard-{i:02d}.jsonl" for i in (7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 4, 6)]
    for name in names:
        (tmp_path / name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    want = [tmp_path / n for n in sorted(names)]
    assert jsonl_shards(str(tmp_path)) == want
    assert jsonl_shards(str(tmp_path / "shard-*.jsonl")) == want
