"""Run records are verified when read: a checksum against edits and corruption, ranges against nonsense."""

import json
import math

import pytest

from conftest import ROOT
from experiments.records import checksum, record_problem, verify_record, write_record
from logitsam.errors import UserError


def record():
    return {
        "spec": {"name": "dpo/s2"},
        "rewards": [0.5, -0.25, 0.0],
        "outcomes_vs_sft": [1.0, 0.5, 0.0],
        "outcomes_vs_chosen": [0.0, float("nan"), 1.0],  # a judge failure
        "kl_values": [0.1, 0.2, 0.3],
        "log": [{"step": 1, "loss": 0.69}],
    }


def test_written_records_verify_and_any_edit_is_noticed(tmp_path):
    path = tmp_path / "r" / "record.json"
    write_record(str(path), record())
    saved = json.loads(path.read_text())
    assert verify_record(str(path), saved) is saved
    text = path.read_text()
    for old, new in (('"outcomes_vs_sft": [1.0, 0.5, 0.0]', '"outcomes_vs_sft": [1.0, 1.0, 0.0]'),
                     ('"loss": 0.69', '"loss": 0.68')):  # fmt: skip
        edited = json.loads(text.replace(old, new))
        with pytest.raises(UserError, match=r"record.json: its checksum does not match.*delete it"):
            verify_record(str(path), edited)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("outcomes_vs_sft", [1.0, 1.7, 0.0], "outcomes_vs_sft holds 1.7"),
        ("outcomes_vs_sft", [1.0, -0.5, 0.0], "outcomes_vs_sft holds -0.5"),
        ("outcomes_vs_sft", [[1.0, 0.5], [2.0, 0.0]], "outcomes_vs_sft holds 2.0"),
        ("outcomes_vs_chosen", [1.0, "x", 0.0], "outcomes_vs_chosen holds 'x'"),
        ("rewards", [0.5, math.nan, 0.0], "rewards holds nan"),
        ("kl_values", [0.1, math.inf, 0.3], "kl_values holds inf"),
        ("log", [], "training log is empty"),
    ],
)
def test_out_of_range_values_are_refused_even_with_a_valid_checksum(key, value, problem):
    """Nonsense written by the code itself (a judge bug, a NaN reward) carries a valid checksum."""
    rec = {**record(), key: value}
    rec["checksum"] = checksum(rec)
    assert problem in record_problem(rec)


def test_a_record_without_a_checksum_is_refused(tmp_path):
    """Deleting the checksum key must not turn the check off (a hand-edited record would pass)."""
    rec = {k: v for k, v in write_record(str(tmp_path / "record.json"), record()).items() if k != "checksum"}
    assert "no checksum" in record_problem(rec)
    with pytest.raises(UserError, match=r"record.json: it has no checksum.*delete it"):
        verify_record(str(tmp_path / "record.json"), rec)


def test_the_committed_records_verify():
    import glob

    paths = glob.glob(str(ROOT / "results" / "**" / "record.json"), recursive=True)
    assert paths
    for p in paths:
        with open(p, encoding="utf-8") as f:
            assert record_problem(json.load(f)) is None, p
