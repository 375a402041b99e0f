"""The user's own files beside ours: a README.md or notes in train.output_dir, prompt files in an
evaluation's --out. What logitsam wrote is known by the directory's manifest, never by a file's text."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, TINY_CPU
from logitsam import cli
from logitsam.training import manifest
from logitsam.training.rundir import LOCK_NAME

QUICK = ["--config", TINY_CPU, "--train.max_steps=1", "--train.eval_steps=null",
         "--data.eval_fraction=0", "--train.print_logs=false"]  # fmt: skip
OURS = "tags:\n- logitsam"  # the card's metadata


def train(out, *extra):
    return cli.main(["train", *QUICK, f"--train.output_dir={out}", *extra])


def test_a_users_readme_survives_training_and_overwrite(tmp_path):
    """A README.md that mentions logitsam was taken for our old card: replaced at the end of training,
    deleted by overwrite_output_dir."""
    out = tmp_path / "run"
    out.mkdir()
    mine = "# My experiments with logitsam\n\nNotes I keep here.\n"
    (out / "README.md").write_text(mine)
    (out / "notes.txt").write_text("mine too")
    assert train(out) == 0
    assert (out / "README.md").read_text() == mine and OURS in (out / "MODEL_CARD.md").read_text()
    assert train(out, "--train.overwrite_output_dir=true") == 0
    assert (out / "README.md").read_text() == mine and (out / "notes.txt").read_text() == "mine too"
    assert OURS in (out / "MODEL_CARD.md").read_text() and manifest.owns(str(out), "MODEL_CARD.md")


def test_a_latin1_readme_in_a_lora_run_is_left_alone(tmp_path):
    """A README.md that is not UTF-8 crashed the end of a finished run; PEFT's save also rewrites a README.md."""
    out = tmp_path / "run"
    out.mkdir()
    mine = "# Résumé des expériences logitsam\n".encode("latin-1")
    (out / "README.md").write_bytes(mine)
    assert train(out, "--model.lora_r=2") == 0
    assert (out / "README.md").read_bytes() == mine
    assert "| LoRA rank | 2 |" in (out / "MODEL_CARD.md").read_text()


def test_a_lora_runs_readme_is_our_card(tmp_path):
    """PEFT writes its blank card into README.md during the save, and our card then skipped it."""
    out = tmp_path / "run"
    assert train(out, "--model.lora_r=2") == 0
    card = (out / "README.md").read_text()
    assert OURS in card and "| LoRA rank | 2 |" in card and "Model Card for Model ID" not in card
    assert not (out / "MODEL_CARD.md").exists() and "adapter_model.safetensors" in manifest.read(str(out)).files


FIXTURE = str(FIXTURES / "explicit.jsonl")
SMALL = ["--limit", "2", "--max-new-tokens", "2", "--batch-size", "2"]


def test_the_users_files_in_out_survive_evaluate_overwrite(tmp_path, capsys):
    """--overwrite removed the whole samples/ folder, the prompt file being evaluated included."""
    out = tmp_path / "ev"
    (out / "samples").mkdir(parents=True)
    prompts = out / "samples" / "prompts.jsonl"
    shutil.copy(FIXTURE, prompts)
    (out / "notes.txt").write_text("mine")
    argv = ["generate", "--model", "tiny-random", "--prompts", str(prompts), "--out", str(out), *SMALL]
    for extra in (["--overwrite"], [], ["--overwrite"]):  # nothing to replace yet, refused, replaced
        assert cli.main([*argv, *extra]) == (2 if not extra else 0)
        assert prompts.read_bytes() == Path(FIXTURE).read_bytes() and (out / "notes.txt").read_text() == "mine"
    assert (
        "holds a previous evaluation (samples/tiny-random.jsonl)" in capsys.readouterr().err
    )  # generate: samples only
    assert (out / "samples" / "tiny-random.jsonl").exists() and not (out / "report.md").exists()


def test_a_file_we_did_not_write_is_never_replaced(tmp_path, capsys):
    """A prompt file named like a model's samples (or a report.md of an older version) would be written over."""
    out = tmp_path / "ev"
    (out / "samples").mkdir(parents=True)
    shutil.copy(FIXTURE, out / "samples" / "tiny-random.jsonl")
    for extra in ([], ["--overwrite"]):
        argv = ["generate", "--model", "tiny-random", "--prompts", str(out / "samples" / "tiny-random.jsonl"),
                "--out", str(out), *SMALL, *extra]  # fmt: skip
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "samples/tiny-random.jsonl, not written by logitsam" in err and len(err.strip().splitlines()) == 1
    assert (out / "samples" / "tiny-random.jsonl").read_bytes() == Path(FIXTURE).read_bytes()


def test_a_model_labelled_baseline_keeps_the_baselines_samples(tmp_path, monkeypatch):
    """A run directory named `baseline` was labelled `baseline` and wrote its samples over the baseline's."""
    from logitsam.models import tiny_model, tiny_tokenizer

    monkeypatch.chdir(tmp_path)
    tok = tiny_tokenizer()
    tiny_model(len(tok), seed=1).save_pretrained("baseline")
    tok.save_pretrained("baseline")
    fixture = str(FIXTURES / "explicit.jsonl")
    argv = ["evaluate", "--model", "baseline", "--model", "tiny-random", "--baseline", "tiny-random",
            "--prompts", fixture, "--out", "ev", *SMALL]  # fmt: skip
    assert cli.main(argv) == 0
    saved = {
        p.name: json.loads(p.read_text().splitlines()[0])["model"] for p in (tmp_path / "ev" / "samples").iterdir()
    }
    assert saved == {
        "baseline.jsonl": "tiny-random",
        "baseline-2.jsonl": "baseline",
        "tiny-random.jsonl": "tiny-random",
    }
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert sorted(results["models"]) == ["baseline-2", "tiny-random"]


def test_a_second_evaluation_into_the_same_out_is_refused(tmp_path, capsys):
    """Two evaluations into one --out both exited 0, and results.json kept one of them."""
    out = tmp_path / "ev"
    out.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:  # the lock of an evaluation still running in another process
            (out / LOCK_NAME).write_text(json.dumps({"pid": running.pid, "host": socket.gethostname()}))
            argv = ["generate", "--model", "tiny-random", "--prompts", FIXTURE, "--out", str(out), *SMALL]
            assert cli.main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"--out: {str(out)!r} is in use by pid {running.pid}" in err
            assert sorted(os.listdir(out)) == [LOCK_NAME]
        finally:
            running.kill()
    assert cli.main(argv) == 0 and not (out / LOCK_NAME).exists()  # a lock left by a dead process is taken over


def test_evaluate_overwrite_into_a_run_directory_keeps_the_run(tmp_path):
    """A run and an evaluation keep separate manifests: --overwrite removes the evaluation's files only."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: mine")
    manifest.record(str(run), files=["config.yaml", "README.md"])
    (run / "README.md").write_text("our card")
    argv = ["generate", "--model", "tiny-random", "--prompts", FIXTURE, "--out", str(run), *SMALL, "--overwrite"]
    assert cli.main(argv) == 0 and cli.main(argv) == 0
    assert (run / "config.yaml").read_text() == "run: mine" and (run / "README.md").read_text() == "our card"
    assert manifest.owns(str(run), "config.yaml") and not manifest.owns(str(run), "report.md")
