"""User mistakes found by a hostile-input hunt (third round): each is one error naming the file, line,
field or option, and nothing already written is lost or overwritten."""

import json
import logging
import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_CPU
from logitsam.cli.checks import out_file
from logitsam.config import schema as C
from logitsam.data.examples import load_examples
from logitsam.data.files import read_rows
from logitsam.errors import ConfigError, DataError, UserError
from logitsam.evaluation.command import _check_reward_head, _claim_out
from logitsam.evaluation.evaluate import read_prompts
from logitsam.evaluation.judges import JudgeError, LLMJudge
from logitsam.models import check_device
from logitsam.plot import plot_runs
from logitsam.training import manifest
from logitsam.training.checkpoints import trim_metrics
from logitsam.training.commit import MARKER, sampled_digest
from logitsam.training.resume import check_resume_data, check_resume_settings
from logitsam.training.run import check_eval_rows
from logitsam.training.rundir import check_not_an_input
from logitsam.training.sft import load_sft_examples
from logitsam.training.trainer import StopOnDivergence, TrainingDiverged

ROW = {"prompt": "q", "chosen": " a", "rejected": " b"}


# --- prompt files and data rows ---------------------------------------------------------------------


def test_a_txt_prompt_file_is_read_as_data_files_are(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe h\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8 \(byte 0xff\)"):
        read_prompts(str(bad))
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfHello\r\n\nWorld\n")  # Excel / Notepad: a BOM and CRLF line ends
    assert read_prompts(str(bom)) == (["Hello", "World"], [None, None])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_prompt_path_that_is_a_pipe_is_named_as_such(tmp_path):
    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_prompts(str(fifo))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('prompt,chosen,rejected\na,b,c\nd,e,f\n"Hx, "a, c\n', 4),  # the bad quote is on line 4
        ('prompt,chosen,rejected\na,b,c\n"multi\nline" x,e,f\n', 3),  # inside a field spanning lines 2-3
    ],
)
def test_malformed_csv_names_the_line_of_the_fault(tmp_path, text, line):
    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=rf"d\.csv:{line}: malformed CSV"):
        list(read_rows(str(path)))


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_a_null_value_is_called_null_not_missing(tmp_path, field):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, field: None}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"d\.jsonl:2: field '{field}': is null; expected a string"):
        load_examples([str(path)])


def test_sft_row_with_two_different_targets_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [{"prompt": "q", "completion": " a"}, {"prompt": "q", "completion": " a", "response": " b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'response': differs from 'completion'"):
        load_sft_examples([str(path)])
    rows[1]["response"] = " a"  # the same text twice is no contradiction
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [e.chosen for e in load_sft_examples([str(path)])] == [" a", " a"]


# --- outputs never replace inputs -------------------------------------------------------------------


def test_output_dir_may_not_be_or_hold_the_starting_model(tmp_path):
    model = tmp_path / "sft"
    model.mkdir()
    with pytest.raises(ConfigError, match=r"train\.output_dir: .* is model\.name_or_path"):
        check_not_an_input(str(model), [("model.name_or_path", str(model))])
    with pytest.raises(ConfigError, match=r"train\.output_dir: .* holds model\.ref_name_or_path"):
        check_not_an_input(
            str(tmp_path), [("model.name_or_path", "tiny-random"), ("model.ref_name_or_path", str(model))]
        )
    check_not_an_input(str(tmp_path / "dpo"), [("model.name_or_path", str(model)), ("model.ref_name_or_path", None)])


def test_an_output_file_may_not_be_an_input(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--out: .* is an input of this command"):
        out_file(str(data), "--out", (str(data),))
    with pytest.raises(ConfigError, match="is an input"):  # an existing file inside an input directory
        out_file(str(model / "config.json"), "--out", (str(model),))
    out_file(str(model / "traces.json"), "--out", (str(model), str(data)))  # a new file beside it is fine


def _run_with_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    return str(run)


def test_plot_writes_the_format_its_name_says(tmp_path):
    run = _run_with_metrics(tmp_path)
    pdf = tmp_path / "p.pdf"
    plot_runs([run], str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF")
    with pytest.raises(UserError, match=r"p\.xyz: matplotlib cannot write \.xyz files"):
        plot_runs([run], str(tmp_path / "p.xyz"))
    assert not (tmp_path / "p.xyz").exists()


# --- devices and judges -----------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_cuda_is_one_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"--device cuda: .*use --device cpu"):
        check_device("cuda")
    check_device("cpu")
    check_device("auto")


def test_an_unreachable_judge_fails_before_sampling_as_a_user_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = LLMJudge(f"http://127.0.0.1:{port}", "m")
    with pytest.raises(JudgeError, match=rf"cannot reach the judge at http://127\.0\.0\.1:{port}"):
        judge.check_reachable(timeout=2.0)
    assert issubclass(JudgeError, UserError)  # the CLI prints it as one line


def test_a_causal_lm_is_not_a_reward_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"--judge reward_model:.*LlamaForCausalLM, not a reward model"):
        _check_reward_head(str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})
    )
    _check_reward_head(str(tmp_path))


# --- resuming and the run's records -----------------------------------------------------------------


def test_damaged_metrics_lines_are_kept_aside_and_named(tmp_path, caplog):
    lines = [json.dumps({"step": 1, "loss": 1.0}), "garbage{", json.dumps({"step": 2, "loss": 0.5}),
             json.dumps({"step": 3, "loss": 0.4}), '{"step": 4, "lo']  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING):
        assert trim_metrics(str(tmp_path), 2) == 3
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in kept] == [1, 2]
    assert (tmp_path / "metrics.jsonl.dropped").read_text().splitlines() == ["garbage{", lines[3], lines[4]]
    assert "metrics.jsonl:2: not a JSON record (damaged" in caplog.text  # the torn last line is no damage
    assert "metrics.jsonl:5" not in caplog.text


def _resumable(tmp_path):
    out = tmp_path / "run"
    ckpt = out / "checkpoint-2"
    ckpt.mkdir(parents=True)
    cfg = C.apply_overrides(C.Config(), [f"--train.output_dir={out}", "--data.train_files=[d.jsonl]"])
    C.save(cfg, str(out / "config.yaml"))
    marker = {"step": 2, "files": {}, "digests": {}, "config_digest": sampled_digest(str(out / "config.yaml"))}
    (ckpt / f"{MARKER}-0-of-1").write_text(json.dumps(marker))
    return cfg, out, ckpt


def test_a_deleted_config_yaml_does_not_switch_the_settings_check_off(tmp_path):
    cfg, out, ckpt = _resumable(tmp_path)
    (out / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"config\.yaml is missing, but checkpoint-2 was saved by a run that had one"):
        check_resume_settings(cfg, str(ckpt))


@pytest.mark.parametrize("content", ["{}", "[1]", '{"training": 5}'])
def test_a_blanked_data_fingerprint_does_not_switch_the_data_check_off(tmp_path, content):
    cfg, out, ckpt = _resumable(tmp_path)
    (out / "data_fingerprint.json").write_text(content)
    with pytest.raises(ConfigError, match=r"data_fingerprint\.json is missing or unreadable"):
        check_resume_data(cfg, {"training": "abc", "evaluation": "def"}, str(ckpt))


@pytest.mark.parametrize(("was", "now"), [("train", "sft"), ("sft", "train")])
def test_resuming_the_other_commands_run_names_the_command_not_the_data(tmp_path, was, now):
    cfg, out, ckpt = _resumable(tmp_path)
    (out / "data_fingerprint.json").write_text(json.dumps({"kind": was, "training": "abc", "evaluation": "d"}))
    with pytest.raises(ConfigError, match=f"holds a `logitsam {was}` run .*`logitsam {now}` cannot continue it"):
        check_resume_data(cfg, {"kind": now, "training": "xyz", "evaluation": "d"}, str(ckpt))
    check_resume_data(cfg, {"kind": was, "training": "abc", "evaluation": "d"}, str(ckpt))  # same command: fine
    (out / "data_fingerprint.json").write_text(json.dumps({"training": "abc", "evaluation": "d"}))  # older run
    check_resume_data(cfg, {"kind": now, "training": "abc", "evaluation": "d"}, str(ckpt))


def test_overwrite_output_dir_does_not_switch_the_resume_checks_off(tmp_path):
    cfg, _, ckpt = _resumable(tmp_path)
    changed = C.apply_overrides(cfg, ["--loss.name=ipo", "--train.overwrite_output_dir=true"])
    with pytest.raises(ConfigError, match="these settings differ"):
        check_resume_settings(changed, str(ckpt))


# --- evaluation that was asked for, and divergence ----------------------------------------------------


def test_an_eval_set_emptied_by_tokenization_is_an_error(caplog):
    cfg = C.apply_overrides(C.Config(), ["--data.eval_files=[e.jsonl]", "--train.eval_steps=5"])
    with pytest.raises(ConfigError, match=r"data\.eval_files: none of the 3 evaluation rows is usable"):
        check_eval_rows(cfg, 3, 0)
    check_eval_rows(cfg, 3, 1)
    plain = C.apply_overrides(C.Config(), ["--train.eval_steps=5"])
    with caplog.at_level(logging.WARNING):
        check_eval_rows(plain, 0, 0)
    assert "there is no evaluation data" in caplog.text


class _Logged:
    def log(self, logs, start_time=None):
        self.logged = logs


class _Guarded(StopOnDivergence, _Logged):
    def __init__(self, out, fp16=False):
        self.args = SimpleNamespace(fp16=fp16, output_dir=str(out))
        self.state = SimpleNamespace(global_step=7)


def test_a_non_finite_gradient_norm_stops_the_run(tmp_path):
    t = _Guarded(tmp_path)
    t.log({"loss": 0.69, "grad_norm": 1.5})
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient norm \(inf\) at step 7"):
        t.log({"loss": 0.69, "grad_norm": math.inf})
    assert t.logged["grad_norm"] == math.inf  # logged before stopping: metrics.jsonl shows the step
    with pytest.raises(TrainingDiverged):
        t.log({"loss": 0.69, "grad_norm": math.nan})
    _Guarded(tmp_path, fp16=True).log({"grad_norm": math.inf})  # a loss scaler's overflow step: skipped


@pytest.mark.slow
def test_a_huge_rho_stops_with_training_diverged(tmp_path):
    from logitsam.training.run import train

    cfg = C.load(TINY_CPU)
    cfg = C.apply_overrides(cfg, [f"--train.output_dir={tmp_path / 'run'}", "--train.eval_steps=null",
                                  "--train.print_logs=false", "--train.max_steps=3", "--train.logging_steps=1",
                                  "--sam.rho=1e30"])  # fmt: skip
    with pytest.raises(TrainingDiverged, match="non-finite gradient norm"):
        train(cfg)


def test_a_previous_evaluation_is_replaced_only_when_asked(tmp_path):
    """Only what the previous evaluation wrote (its manifest) is replaced; the user's files stay."""
    planned = ["results.json", "report.md", "samples/m.jsonl"]
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "m.jsonl").write_text("{}\n")
    (tmp_path / "samples" / "prompts.jsonl").write_text("{}\n")  # the user's, beside our samples
    (tmp_path / "report.md").write_text("# old")
    (tmp_path / "notes.txt").write_text("mine")
    manifest.record(str(tmp_path), files=planned, name=manifest.EVALUATION)
    prompts = str(tmp_path / "samples" / "prompts.jsonl")
    with pytest.raises(
        ConfigError, match=r"--out: .* holds a previous evaluation \(report\.md, samples/m\.jsonl\); add --overwrite"
    ):
        _claim_out(str(tmp_path), False, planned, prompts)
    assert (tmp_path / "report.md").exists() and (tmp_path / "samples" / "m.jsonl").exists()
    with pytest.raises(ConfigError, match=r"--prompts: .*m\.jsonl' was written by the previous evaluation"):
        _claim_out(str(tmp_path), True, planned, str(tmp_path / "samples" / "m.jsonl"))
    _claim_out(str(tmp_path), True, planned, prompts)  # the old report cannot sit beside new samples
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        manifest.EVALUATION,
        "notes.txt",
        "samples",
        "samples/prompts.jsonl",
    ]
    assert sorted(manifest.read(str(tmp_path), manifest.EVALUATION).files) == sorted(
        planned
    )  # recorded before they are written
    (tmp_path / "new").mkdir()
    _claim_out(str(tmp_path / "new"), False, planned, prompts)
    assert manifest.read(str(tmp_path / "new"), manifest.EVALUATION).folders == {
        "samples"
    }  # created by us: removed once empty


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"step": 1, "loss": "abc"}', r"metrics\.jsonl:2: field 'loss': expected a number, got 'abc'"),
        ('{"loss": 0.5}', r"metrics\.jsonl:2: field 'step': missing"),
        ('{"step": null, "loss": 0.5}', r"metrics\.jsonl:2: field 'step': expected a number"),
    ],
)
def test_plot_refuses_records_logitsam_never_writes(tmp_path, line, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 0.7, "epoch": None}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        plot_runs([str(run)], str(tmp_path / "p.png"))
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no records"):
        plot_runs([str(run)], str(tmp_path / "p.png"))


def test_sft_reads_conversational_messages_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
             {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]  # fmt: skip
    path.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    (e,) = load_sft_examples([str(path)])
    assert e.prompt == turns[:3] and e.chosen == turns[3]  # the last assistant turn is the target
    for bad, message in (
        (turns[:3], r"m\.jsonl:1: field 'messages\[2\]\.role': the last message must be the assistant's"),
        ([{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}], r"'messages\[1\]\.role': 'bot' is not"),
        ([*turns[:3], {"role": "assistant", "content": "  "}], r"'messages\[3\]\.content': empty"),
    ):
        path.write_text(json.dumps({"messages": bad}) + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=message):
            load_sft_examples([str(path)])
