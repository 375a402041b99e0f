"""The researcher's workflow from the command line on the tiny model: SFT → DPO + logits-SAM → evaluate,
with an OpenAI-compatible judge served locally; the report's numbers are recomputed from the saved samples."""

import json
from pathlib import Path

import pytest

from judge_server import JudgeHandler, serving
from logitsam import cli
from logitsam.evaluation.evaluate import read_prompts
from logitsam.evaluation.judges import PAIRWISE_PROMPTS
from logitsam.evaluation.options import JUDGE_TASKS
from logitsam.evaluation.winrate import bootstrap

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-cpu.yaml")
FIXTURE = str(ROOT / "tests" / "fixtures" / "explicit.jsonl")


class LetterJudge(JudgeHandler):
    """Prefers the response with more letters (the first on ties): a deterministic judge."""

    def verdict(self, text: str) -> str:
        a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        b = text.split("Response B:\n")[1].split("\n\nFIRST provide")[0]
        letters = lambda s: sum(c.isalpha() for c in s)  # noqa: E731
        return f"Comparison: x.\nMore helpful: {'A' if letters(a) >= letters(b) else 'B'}"


@pytest.fixture
def judge_url():
    with serving(LetterJudge) as url:
        yield url


def test_the_cli_judge_tasks_are_the_judges():
    assert set(JUDGE_TASKS) == set(PAIRWISE_PROMPTS)


def _common(out):
    return [f"--train.output_dir={out}", "--train.max_steps=3", "--train.eval_steps=null", "--data.eval_fraction=0",
            "--train.print_logs=false"]  # fmt: skip


@pytest.mark.slow
def test_sft_then_dpo_with_logits_sam_then_evaluate(tmp_path, monkeypatch, judge_url):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sft", "--config", TINY, *_common("sft")]) == 0
    sft_log = [json.loads(line) for line in Path("sft/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sft_log if "loss" in r] == [1, 2, 3] and Path("sft/model.safetensors").exists()
    assert cli.main(["train", "--config", TINY, "--model.name_or_path=sft", "--sam.rho=0.01", *_common("dpo")]) == 0
    dpo_log = [json.loads(line) for line in Path("dpo/metrics.jsonl").read_text().splitlines()]
    assert dpo_log[0]["logps/chosen_drift"] == 0.0  # DPO starts from the SFT model, which is its reference
    assert "sam/loss_post" in dpo_log[0]
    assert "- sft" in Path("sft/README.md").read_text()  # model cards
    card = Path("dpo/README.md").read_text()
    assert "logits-sam" in card and "of `sft` with logitsam" in card and "| steps | 3 |" in card
    assert str(tmp_path) not in card  # paths as typed, relative: nothing of this machine
    argv = ["evaluate", "--model", "dpo", "--model", "sft", "--baseline", "sft", "--prompts", FIXTURE,
            "--judge", f"llm:{judge_url}", "--judge-model", "m", "--max-new-tokens", "8", "--out", "ev"]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads(Path("ev/results.json").read_text())
    prompts, _ = read_prompts(FIXTURE)
    report = Path("ev/report.md").read_text()
    for label in ("dpo", "sft"):
        saved = [json.loads(line) for line in Path(f"ev/samples/{label}.jsonl").read_text().splitlines()]
        base = [json.loads(line) for line in Path("ev/samples/baseline.jsonl").read_text().splitlines()]
        assert [s["prompt"] for s in saved] == prompts
        # the judge's verdicts, recomputed from the saved samples: both orders, the first wins ties
        letters = lambda s: sum(c.isalpha() for c in s)  # noqa: E731
        outcomes = []
        for s, b in zip(saved, base, strict=True):
            x, y = letters(s["response"]), letters(b["response"])
            outcomes.append(((x >= y) + (y < x)) / 2)
        row = res["models"][label]
        assert row["outcomes"] == outcomes
        win = bootstrap(outcomes)
        words = sum(len(s["response"].split()) for s in saved) / len(saved)
        line = next(x for x in report.splitlines() if x.startswith(f"| {label} |"))
        assert f"{100 * win.mean:.1f} [{100 * win.low:.1f}, {100 * win.high:.1f}]" in line
        assert f"| {words:.1f} |" in line
    assert res["models"]["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)  # the baseline is the reference
    assert res["models"]["sft"]["outcomes"] == [0.5] * len(prompts)  # same model, same seed: identical samples
    assert res["models"]["dpo"]["kl"] != 0.0
    assert Path("ev/win_rates.png").stat().st_size > 3000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--judge", "bogus"], "--judge: one of vader"),
        (["--judge", "llm:ftp://x"], "--judge: LLMJudge base URL must start with http"),
        (["--temperature", "-1"], "--temperature: must be ≥ 0"),
        (["--top-p", "0"], "--top-p: must be in (0, 1]"),
        (["--baseline", "chosen", "--prompts", "PROMPTS_TXT"], "--baseline chosen"),
        (["--prompts", "MISSING"], "no such prompt file"),
        (["--model", "/nonexistent/model"], "--model"),
    ],
)
def test_evaluate_refuses_bad_input_before_loading_anything(tmp_path, capsys, argv, message):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\nsecond prompt\n")
    argv = [str(txt) if a == "PROMPTS_TXT" else str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in argv]
    base = ["evaluate", "--model", "tiny-random", "--prompts", FIXTURE, "--out", str(tmp_path / "ev")]
    assert cli.main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ev" / "results.json").exists()


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert read_prompts(str(tmp_path / "a.txt")) == (["one", "two"], [None, None])
    (tmp_path / "b.jsonl").write_text('{"prompt": "p", "chosen": "c"}\n{"prompt": "q"}\n')
    assert read_prompts(str(tmp_path / "b.jsonl")) == (["p", "q"], ["c", None])
    prompts, chosen = read_prompts(FIXTURE)  # a preference file: prompts and chosen responses
    assert len(prompts) == len(chosen) > 0 and all(chosen)
    (tmp_path / "c.jsonl").write_text('{"prompt": "p"}\n{"prompt": "  "}\n')
    with pytest.raises(Exception, match=r"c.jsonl:2: field 'prompt': empty"):
        read_prompts(str(tmp_path / "c.jsonl"))


def test_sft_data_and_batches(tmp_path):
    from logitsam.config.schema import ModelConfig
    from logitsam.models import load_tokenizer
    from logitsam.training.sft import SFTCollator, load_sft_examples, tokenize_sft

    f = tmp_path / "sft.jsonl"
    f.write_text('{"prompt": "Q: hi", "completion": " hello"}\n{"prompt": "Q: bye", "completion": " see you"}\n')
    ex = load_sft_examples([str(f)])
    assert [(e.prompt, e.chosen) for e in ex] == [("Q: hi", " hello"), ("Q: bye", " see you")]
    assert [e.chosen for e in load_sft_examples([FIXTURE])] == read_prompts(FIXTURE)[1]  # preference data: chosen
    tok = load_tokenizer(ModelConfig(name_or_path="tiny-random"))
    rows, drops = tokenize_sft(tok, ex, 64, 32)
    assert drops.total == 0 and rows[0]["response_ids"][-1] == tok.eos_token_id
    batch = SFTCollator(tok.pad_token_id)(rows)
    for i, r in enumerate(rows):  # labels: the response tokens only, at their positions
        p, y = len(r["prompt_ids"]), len(r["response_ids"])
        assert batch["labels"][i, p : p + y].tolist() == r["response_ids"]
        assert (batch["labels"][i, :p] == -100).all() and (batch["labels"][i, p + y :] == -100).all()
        assert batch["attention_mask"][i].sum() == p + y
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "completion": " a"}\n{"prompt": "Q", "completion": 3}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: field 'completion': expected a string, got int"):
        load_sft_examples([str(bad)])
    bad.write_text('{"prompt": "Q", "response": "  "}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:1: field 'response': empty"):
        load_sft_examples([str(bad)])


def test_model_card_says_what_the_model_is(tmp_path):
    from logitsam.config import schema as C
    from logitsam.training.modelcard import card_text, write_model_card

    cfg = C.load(TINY)
    C.apply_overrides(cfg, [f"--train.output_dir={tmp_path}", "--sam.rho=0.001", "--loss.beta=0.2"])
    text = card_text(cfg, {"global_step": 6, "train_loss": 0.61234567}, command="logitsam train --x")
    meta = text.split("---")[1]
    assert "base_model" not in meta and "license: other" in meta and "logits-sam" in meta and "- dpo" in meta
    assert "of `tiny-random` with logitsam" in text  # a built-in random model: no Hub id to name
    for part in ("| loss | dpo |", "beta = 0.2", "ρ = 0.001", "| steps | 6 |", "| train_loss | 0.612346 |",
                 "logitsam train --config config.yaml", "The command that made it: `logitsam train --x`"):  # fmt: skip
        assert part in text, part
    sft = card_text(cfg, {}, kind="sft", command="")
    assert "- sft" in sft and "| loss |" not in sft and "logitsam sft --config config.yaml" in sft
    (tmp_path / "README.md").write_text("my own notes")
    write_model_card(cfg, {})
    assert (tmp_path / "README.md").read_text() == "my own notes"  # never over someone's README
