"""evaluate / generate say what they did: the chat template by training's rule, greedy recorded as temperature 0,
generate writes samples only, VADER named a sentiment judge with its scores kept, and a run's card gets its
evaluation."""

import json
from pathlib import Path

import pytest
from test_publishing import hub_valid

from logitsam import cli
from logitsam.evaluation.evaluate import uses_chat_template
from logitsam.evaluation.judges import vader_reward

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-cpu.yaml")
EXPLICIT = str(ROOT / "tests" / "fixtures" / "explicit.jsonl")
CHAT = str(ROOT / "tests" / "fixtures" / "ultrafeedback.jsonl")


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_the_chat_template_is_applied_by_trainings_rule(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("hello\n")
    assert uses_chat_template(CHAT) and not uses_chat_template(EXPLICIT) and not uses_chat_template(str(txt))


@pytest.mark.slow
def test_generate_writes_samples_only_and_records_greedy_as_temperature_0(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "--model", "tiny-random", "--prompts", CHAT, "--temperature", "0", "--max-new-tokens", "3",
            "--out", "gen"]  # fmt: skip
    assert cli.main(argv) == 0
    visible = sorted(str(p.relative_to("gen")) for p in Path("gen").rglob("*") if not p.name.startswith("."))
    assert visible == ["samples", "samples/tiny-random.jsonl"]
    got = rows("gen/samples/tiny-random.jsonl")
    assert len(got) == 4 and {(r["temperature"], r["do_sample"], r["chat"]) for r in got} == {(0.0, False, True)}


@pytest.mark.slow
def test_vader_is_a_sentiment_judge_whose_scores_are_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [
        "evaluate",
        "--model",
        "tiny-random",
        "--prompts",
        CHAT,
        "--no-chat",
        "--max-new-tokens",
        "3",
        "--out",
        "ev",
    ]
    assert cli.main(argv) == 0
    res = json.loads(Path("ev/results.json").read_text())
    row = res["models"]["tiny-random"]
    assert res["settings"]["chat"] is False and len(row["judge_scores"]) == len(res["baseline_scores"]) == 4
    pairs = zip(row["judge_scores"], res["baseline_scores"], strict=True)
    assert row["outcomes"] == [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in pairs]  # the scores, compared
    vader = vader_reward()
    chosen = [r["chosen"][-1]["content"] for r in rows(CHAT)]
    assert res["baseline_scores"] == pytest.approx([vader("", c) for c in chosen])  # the data's chosen, scored
    report = Path("ev/report.md").read_text()
    assert "VADER sentiment" in report and "not helpfulness" in report and "gold" not in report


@pytest.mark.slow
def test_sft_lora_evaluate_fills_the_hub_ready_card(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--train.max_steps=2", "--train.eval_steps=null", "--data.eval_fraction=0", "--train.print_logs=false"]
    assert cli.main(["sft", "--config", TINY, "--train.output_dir=sft", *common]) == 0
    assert cli.main(["train", "--config", TINY, "--model.name_or_path=sft", "--model.lora_r=4",
                     "--train.output_dir=dpo", *common]) == 0  # fmt: skip
    assert cli.main(["evaluate", "--model", "dpo", "--prompts", EXPLICIT, "--max-new-tokens", "3", "--limit", "4",
                     "--out", "ev"]) == 0  # fmt: skip
    card = Path("dpo/README.md").read_text()
    meta = hub_valid(card)
    assert meta["library_name"] == "peft" and "Not evaluated yet" not in card
    win = json.loads(Path("ev/results.json").read_text())["models"]["dpo"]["win"]
    assert f"| {100 * win['mean']:.1f} [{100 * win['low']:.1f}, {100 * win['high']:.1f}] |" in card
    assert "of `sft`" in card and str(tmp_path) not in card and "4 prompts of `explicit.jsonl`" in card
