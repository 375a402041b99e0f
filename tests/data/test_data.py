"""Data formats, file types, validation errors (file, line, field), tokenization and collation."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import FIXTURES, ROOT, TINY_CPU
from logitsam.core.logprobs import IGNORE_INDEX
from logitsam.data.batching import PreferenceCollator, tokenize_examples
from logitsam.data.examples import load_examples, parse_row
from logitsam.errors import DataError
from logitsam.models import tiny_tokenizer

FIX = str(FIXTURES)


def test_explicit_jsonl_json_csv_agree():
    a = load_examples([f"{FIX}/explicit.jsonl"])[:4]
    b = load_examples([f"{FIX}/explicit.json"])
    c = load_examples([f"{FIX}/explicit.csv"])
    assert [(e.prompt, e.chosen, e.rejected) for e in a] == [(e.prompt, e.chosen, e.rejected) for e in b]
    assert [(e.prompt, e.chosen) for e in a] == [(e.prompt, e.chosen) for e in c]
    assert a[0].prompt.endswith("TL;DR:") and a[0].chosen.startswith(" Bread")
    assert b[2].source == f"{FIX}/explicit.json:12"  # line where the third element starts


def test_parquet_and_dataset_dir(tmp_path):
    import datasets

    with open(f"{FIX}/explicit.jsonl") as f:
        rows = [json.loads(line) for line in f][:3]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "dsdir"))
    for path in (tmp_path / "d.parquet", tmp_path / "dsdir"):
        ex = load_examples([str(path)])
        assert [e.chosen for e in ex] == [r["chosen"] for r in rows]


def test_hh_prompt_is_prefix_up_to_last_assistant():
    ex = load_examples([f"{FIX}/hh.jsonl"])
    assert ex[0].prompt == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert ex[0].chosen.startswith(" Put it") and ex[0].rejected == " Eggs are from chickens."
    assert ex[1].prompt.endswith("And of Italy?\n\nAssistant:") and "Paris." in ex[1].prompt
    assert ex[1].rejected == " I don't know."


def test_conversational_keeps_scores_and_messages():
    ex = load_examples([f"{FIX}/ultrafeedback.jsonl"])
    assert ex[0].is_chat and ex[0].prompt == [{"role": "user", "content": "Name a primary color."}]
    assert ex[0].chosen == {"role": "assistant", "content": "Red is a primary color."}
    assert (ex[0].score_chosen, ex[0].score_rejected) == (9.0, 3.0)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": ',
            r"bad\.jsonl:2: malformed JSON",
        ),
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "rejected": "c"}',
            r"bad\.jsonl:3: field 'chosen': missing",
        ),
        ('{"prompt": "a", "chosen": 5, "rejected": "c"}', r"bad\.jsonl:1: field 'chosen': expected a string, got int"),
        ('{"prompt": "a", "chosen": "b", "rejected": "  "}', r"bad\.jsonl:1: field 'rejected': empty response"),
        ('["not", "an", "object"]', r"bad\.jsonl:1: expected an object"),
        (
            '{"chosen": "\\n\\nHuman: x\\n\\nAssistant: y", "rejected": "other"}',
            r"bad\.jsonl:1: field 'chosen': no shared",
        ),
        (
            '{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant"}], "rejected": []}',
            r"bad\.jsonl:1: field 'chosen\[1\]'",
        ),
    ],
)
def test_bad_rows_name_file_line_field(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_examples([str(path)])


def test_non_utf8_and_json_errors(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'
    )
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_examples([str(path)])
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"prompt": "a",\n  "chosen": }\n]')
    with pytest.raises(DataError, match=r"bad\.json:3: malformed JSON"):
        load_examples([str(bad)])
    with pytest.raises(DataError, match="file not found"):
        load_examples([str(tmp_path / "nope.jsonl")])


@pytest.mark.slow
def test_cli_reports_data_errors_without_traceback(tmp_path, cli_env):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": 3, "chosen": "b", "rejected": "c"}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "logitsam",
            "train",
            "--config",
            TINY_CPU,
            f"--data.train_files=[{bad}]",
            f"--train.output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert f"{bad}:2: field 'prompt': expected a string" in out.stderr
    assert "Traceback" not in out.stderr


def test_tokenization_labels_eos_truncation_and_drops():
    tok = tiny_tokenizer()
    ex = [
        parse_row({"prompt": "Q: hi", "chosen": " yes", "rejected": " no"}, "auto", "x", 1),
        parse_row({"prompt": "P" * 50, "chosen": " a", "rejected": " b"}, "auto", "x", 2),  # prompt too long
        parse_row({"prompt": "Q", "chosen": " same", "rejected": " same"}, "auto", "x", 3),  # identical
        parse_row({"prompt": "Q", "chosen": " " + "long " * 20, "rejected": " s"}, "auto", "x", 4),
    ]
    rows, drops = tokenize_examples(tok, ex, max_length=30, max_prompt_length=20)
    assert (drops.prompt_too_long, drops.identical_responses) == (1, 1) and len(rows) == 2
    r = rows[0]
    assert r["chosen_ids"][-1] == tok.eos_token_id and tok.decode(r["chosen_ids"][:-1]) == " yes"
    assert len(rows[1]["prompt_ids"]) + len(rows[1]["chosen_ids"]) == 30  # response cut to the room left
    batch = PreferenceCollator(tok.pad_token_id or 0)(rows)
    assert batch["input_ids"].shape[0] == 4
    lab = batch["labels"][0]
    n_prompt = len(r["prompt_ids"])
    assert (lab[:n_prompt] == IGNORE_INDEX).all()
    assert lab[n_prompt : n_prompt + len(r["chosen_ids"])].tolist() == r["chosen_ids"]
    assert (lab[n_prompt + len(r["chosen_ids"]) :] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].sum() == n_prompt + len(r["chosen_ids"])
    assert batch["labels"][2, n_prompt:].ne(IGNORE_INDEX).sum() == len(r["rejected_ids"])


def test_chat_template_rendering():
    tok = tiny_tokenizer()
    ex = load_examples([f"{FIX}/ultrafeedback.jsonl"])
    rows, _ = tokenize_examples(tok, ex, 256, 128)
    prompt = tok.decode(rows[0]["prompt_ids"])
    assert prompt == "<|im_start|>user\nName a primary color.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(rows[0]["chosen_ids"]) == "Red is a primary color.<|im_end|>"
    batch = PreferenceCollator(0)(rows)
    assert batch["score_chosen"].tolist() == [9.0, 10.0, 8.5, 9.0]


# ---- hostile files ----------------------------------------------------------------------------
ROW = {"prompt": "p", "chosen": " a", "rejected": " b"}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\t\n\r\n"),
        ("empty.csv", ""),
        ("header.csv", "prompt,chosen,rejected\n"),
        ("bom-header.csv", "\ufeffprompt,chosen,rejected\r\n"),
        ("empty-list.json", "[]"),
        ("empty-data.json", '{"data": []}'),
    ],
)
def test_files_without_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: no rows"):
        load_examples([str(path)])


def test_parquet_without_rows_and_not_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match=r"empty\.parquet: no rows"):
        load_examples([str(tmp_path / "empty.parquet")])
    (tmp_path / "fake.parquet").write_text(json.dumps(ROW))
    with pytest.raises(DataError, match=r"fake\.parquet: not a readable Parquet file"):
        load_examples([str(tmp_path / "fake.parquet")])


def test_missing_prompt_says_so(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({"chosen": " a", "rejected": " b"}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'prompt': missing"):
        load_examples([str(path)])
    path = tmp_path / "d.csv"
    path.write_text("chosen,rejected\n a, b\n")
    with pytest.raises(DataError, match=r"d\.csv:2: field 'prompt': missing"):
        load_examples([str(path)])


def test_excel_csv_with_bom_and_line_breaks_in_fields(tmp_path):
    path = tmp_path / "excel.csv"
    text = (
        'prompt,chosen,rejected,score_chosen,score_rejected\r\n"two\r\nlines\u2028sep",yes,no,7.5,1\r\n'
        "q,a\u2029b,c\x85d,2,1\r\n"
    )
    path.write_bytes(text.encode("utf-8-sig"))
    ex = load_examples([str(path)])
    assert [e.prompt for e in ex] == ["two\r\nlines\u2028sep", "q"]
    assert ex[1].chosen == "a\u2029b" and ex[1].rejected == "c\x85d"
    assert ex[0].score_chosen == 7.5 and ex[1].score_chosen == 2.0
    assert ex[1].source.endswith("excel.csv:4")  # the quoted line break counts as a line


def test_jsonl_unicode_line_separators_stay_inside_strings(tmp_path):
    path = tmp_path / "seps.jsonl"
    rows = [{**ROW, "prompt": "a\u2028b\u2029c\x85d"}, {**ROW, "chosen": 5}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    with pytest.raises(DataError, match=r"seps\.jsonl:2: field 'chosen'"):  # line 2, not 5
        load_examples([str(path)])
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0], ensure_ascii=False).encode() + b"\r\n")
    assert load_examples([str(path)])[0].prompt == "a\u2028b\u2029c\x85d"


def conv(*turns, prompt=None, rejected_last=("assistant", "no")):
    msgs = [{"role": r, "content": c} for r, c in turns]
    row = {"chosen": msgs, "rejected": [*msgs[:-1], {"role": rejected_last[0], "content": rejected_last[1]}]}
    if prompt is not None:
        row["prompt"] = [{"role": r, "content": c} for r, c in prompt]
    return row


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (conv(("user", "q"), ("bot", "a")), r"field 'chosen\[1\]\.role': 'bot' is not one of system, user, assistant"),
        (
            conv(("user", "q"), ("user", "q2"), rejected_last=("user", "x")),
            r"field 'chosen\[1\]\.role': the response must be an assistant message, got 'user'",
        ),
        (conv(("user", "q")), r"field 'chosen\[0\]\.role': the response must be an assistant message"),
        (conv(("assistant", "hi"), ("assistant", "a")), r"field 'chosen\[0\]\.role': expected 'user', got 'assistant'"),
        (
            conv(("user", "q"), ("system", "s"), ("user", "q"), ("assistant", "a")),
            r"field 'chosen\[1\]\.role': expected 'assistant', got 'system' \(a system message may only come first\)",
        ),
        (
            conv(("user", "q"), ("user", "q"), ("assistant", "a")),
            r"field 'chosen\[1\]\.role': expected 'assistant', got 'user'",
        ),
        (conv(("system", "s"), ("assistant", "a")), r"field 'chosen': the prompt has no user turn"),
        (
            conv(("assistant", "a"), prompt=[("user", "q"), ("assistant", "x")]),
            r"field 'prompt\[1\]\.role': the prompt must end with a user turn",
        ),
        (
            conv(("user", "a"), prompt=[("user", "q")], rejected_last=("user", "b")),
            r"field 'chosen\[0\]\.role': the response must be an assistant message",
        ),
        (conv(("user", "q\ud800"), ("assistant", "a")), r"field 'chosen\[0\]\.content': not valid Unicode"),
        ({**ROW, "prompt": "\udfff"}, r"field 'prompt': not valid Unicode \(lone surrogate"),
        ({**ROW, "score_chosen": float("nan"), "score_rejected": 1}, r"field 'score_chosen': expected a finite number"),
        ({**ROW, "score_chosen": 1, "score_rejected": "inf"}, r"field 'score_rejected': expected a finite number"),
        ({**ROW, "score_chosen": "high"}, r"field 'score_chosen': expected a number, got 'high'"),
        ({**ROW, "score_chosen": True}, r"field 'score_chosen': expected a number, got True"),
        ({**ROW, "score_chosen": [1]}, r"field 'score_chosen': expected a number"),
        (
            {**conv(("user", "q"), ("assistant", "a")), "score_chosen": {"x": 1}},
            r"field 'score_chosen': expected a number",
        ),
    ],
)
def test_hostile_rows_name_file_line_field(tmp_path, row, expected):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(row) + "\n")  # the bad row is on line 2
    with pytest.raises(DataError, match=r"h\.jsonl:2: " + expected):
        load_examples([str(path)])


def test_system_prompt_and_multi_turn_conversations_are_fine():
    row = conv(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "yes"))
    ex = parse_row(row, "auto", "x", 1)
    assert [m["role"] for m in ex.prompt] == ["system", "user", "assistant", "user"] and ex.chosen["content"] == "yes"


@pytest.mark.parametrize("text", ["[" * 100000, "1" * 5000])
def test_pathological_json_is_a_data_error(tmp_path, text):
    for name in ("p.jsonl", "p.json"):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match="malformed JSON"):
            load_examples([str(tmp_path / name)])


def test_chat_template_failures_are_data_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(conv(("user", "q"), ("assistant", "a"))) + "\n")
    ex = load_examples([str(path)])
    tok = tiny_tokenizer()
    tok.chat_template = None
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'prompt': the tokenizer's chat template failed"):
        tokenize_examples(tok, ex, 64, 32)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match="roles must alternate"):
        tokenize_examples(tok, ex, 64, 32)


def test_csv_fields_longer_than_the_csv_module_default(tmp_path):
    import csv

    path = tmp_path / "long.csv"
    path.write_text(f'prompt,chosen,rejected\nq,"{"x" * 200_000}",b\n')
    limit = csv.field_size_limit()
    assert len(load_examples([str(path)])[0].chosen) == 200_000
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


# ---- records read strictly: nothing silently repaired or dropped ------------------------------
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "c.csv",
            "prompt,chosen,rejected\nq,a,b\nq,a,b,c\n",
            r"c\.csv:3: 4 fields, but the header has 3 \(an unquoted comma",
        ),
        ("c.csv", 'prompt,chosen,rejected\n"q\nx",a,b\nq, a, b, c, d\n', r"c\.csv:4: 5 fields, but the header has 3"),
        ("c.csv", "prompt,chosen,prompt\nq,a,b\n", r"c\.csv:1: field 'prompt': the header names this column twice"),
        ("c.csv", 'prompt,chosen,rejected\nq,a,b\n"q,a,b\nx,y,z\n', r"c\.csv:3: unterminated quote"),
        (
            "c.csv",
            "prompt;chosen;rejected\nq;a;b\n",
            r"c\.csv:2: field 'prompt': missing .*fields found: 'prompt;chosen;rejected'",
        ),
        (
            "d.jsonl",
            '{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a", "chosen": "c", "rejected": "b"}\n',
            r"d\.jsonl:2: field 'chosen': the object gives this key twice",
        ),
        (
            "d.jsonl",
            '{"prompt": "q", "chosen": [{"role": "user", "content": "x", "role": "assistant"}], "rejected": "b"}\n',
            r"d\.jsonl:1: field 'role': the object gives this key twice",
        ),
        (
            "d.json",
            '[\n {"prompt": "q", "chosen": "a", "rejected": "b"},\n {"prompt": "q",\n  "rejected": "b", "rejected": "c"}\n]',
            r"d\.json:3: field 'rejected': the object gives this key twice",
        ),
        (
            "d.json",
            '{"data": [{"prompt": "q", "chosen": "a", "rejected": "b", "prompt": "z"}]}',
            r"d\.json:1: field 'prompt': the object gives this key twice",
        ),
        (
            "d.json",
            '{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a", "rejected": "b"}\n',
            r"d\.json:2: malformed JSON: Extra data .*looks like JSON Lines .*name it \.jsonl",
        ),
        (
            "d.jsonl",
            json.dumps({**ROW, "score_chosen": 1.0}),
            r"d\.jsonl:1: field 'score_rejected': missing, but score_chosen is given",
        ),
        (
            "d.jsonl",
            json.dumps({**ROW, "score_rejected": 0}),
            r"d\.jsonl:1: field 'score_chosen': missing, but score_rejected is given",
        ),
        (
            "d.jsonl",
            json.dumps(
                {
                    "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
                    "score_chosen": 2,
                }
            ),
            r"d\.jsonl:1: field 'score_rejected': missing, but",
        ),
        (
            "d.jsonl",
            json.dumps(
                {
                    "prompt": "q",
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}],
                }
            ),
            r"d\.jsonl:1: field 'prompt': must be a message list .* when chosen/rejected are message lists",
        ),
    ],
)
def test_records_that_would_be_misread(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_examples([str(path)])


def test_rows_with_and_without_scores_are_not_mixed(tmp_path):
    scored = {**ROW, "score_chosen": 2, "score_rejected": 1}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (scored, scored, ROW, scored)) + "\n")
    with pytest.raises(
        DataError,
        match=r"mixed\.jsonl:3: field 'score_chosen': has no scores, but the first row \(.*mixed\.jsonl:1\) has them",
    ):
        load_examples([str(path)])
    path.write_text("\n".join(json.dumps(r) for r in (ROW, scored)) + "\n")
    with pytest.raises(
        DataError, match=r"mixed\.jsonl:2: field 'score_chosen': has scores, but the first row .* has none"
    ):
        load_examples([str(path)])
    other = tmp_path / "plain.csv"  # across the files of one data set too
    other.write_text("prompt,chosen,rejected\nq,a,b\n")
    (tmp_path / "s.jsonl").write_text(json.dumps(scored) + "\n")
    with pytest.raises(DataError, match=r"plain\.csv:2: field 'score_chosen': has no scores"):
        load_examples([str(tmp_path / "s.jsonl"), str(other)])
    assert len(load_examples([str(tmp_path / "s.jsonl"), FIX + "/ultrafeedback.jsonl"])) == 5  # all scored: fine
    assert [e.score_chosen for e in load_examples([FIX + "/explicit.jsonl"])] == [None] * 8  # none scored: fine


def test_hub_names_offline_say_they_need_a_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError,
        match=r"org/prefs:train: not a local file; as a hub data set name it needs a network, but HF_HUB_OFFLINE=1",
    ):
        load_examples(["org/prefs:train"])
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_examples(["nope.jsonl"])


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_examples([str(fifo)])


def test_a_dataset_dict_without_train_is_refused_naming_its_splits(tmp_path):
    import datasets

    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    datasets.DatasetDict({"test": datasets.Dataset.from_list([row])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"a DatasetDict without a 'train' split \(splits: test\)"):
        load_examples([str(tmp_path / "dd")])
    assert len(load_examples([str(tmp_path / "dd" / "test")])) == 1  # the split's own folder works


def test_a_library_bug_in_a_chat_template_is_not_a_user_error():
    """Only a missing template (ValueError) or one rejecting the conversation is a data error."""
    from logitsam.data.batching import _template
    from logitsam.data.examples import PreferenceExample

    class Broken:
        def apply_chat_template(self, *a, **k):
            raise KeyError("bug inside the tokenizer")

    ex = PreferenceExample(prompt=[{"role": "user", "content": "hi"}], chosen="a", rejected="b", source="f.jsonl:3")
    with pytest.raises(KeyError):
        _template(Broken(), ex, "prompt", ex.prompt)


def test_an_empty_prompt_still_scores_the_first_response_token():
    """With a tokenizer that adds no BOS, an empty prompt left nothing before the first response token:
    chosen 'A' vs rejected 'B' compared only EOS. The prompt becomes BOS (or EOS)."""
    from logitsam.config import ModelConfig
    from logitsam.data.examples import PreferenceExample
    from logitsam.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path="tiny-random"))
    rows, _ = tokenize_examples(tok, [PreferenceExample(prompt="", chosen="A", rejected="B")], 64, 32)
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert rows[0]["prompt_ids"] == [start]
    batch = PreferenceCollator(tok.pad_token_id)(rows)
    scored = [int(t) for t in batch["labels"][0] if t != -100]
    assert scored[0] == tok("A", add_special_tokens=False)["input_ids"][0]
