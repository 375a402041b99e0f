"""The README's code, as written: every Python block runs, every block marked as tested runs in bash,
and every `logitsam ...` command line in it names a real subcommand, real options and real config keys.
"""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from logitsam import cli
from logitsam.config import schema as C

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- tests/test_readme.py runs this block as written -->"


def blocks(text: str) -> list[tuple[str, str, bool]]:
    """[(language, code, marked to run)] of the fenced blocks of a markdown text."""
    out = []
    for m in re.finditer(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", text, flags=re.S):
        out.append((m["lang"], m["code"], m["before"].strip() == MARK))
    return out


README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = blocks(README)
PYTHON = [code for lang, code, _ in BLOCKS if lang == "python"]
MARKED = [code for lang, code, run in BLOCKS if run]


def _workdir(tmp_path: Path) -> Path:
    """A scratch directory that sees the repository's configs and fixtures, as a clone's root does."""
    for name in ("configs", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(PYTHON) >= 2 and len(MARKED) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("code", PYTHON, ids=[f"python{i}" for i in range(len(PYTHON))])
def test_python_blocks_run_as_written(code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "TRL_EXPERIMENTAL_SILENCE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=_workdir(tmp_path), env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("code", MARKED, ids=[f"marked{i}" for i in range(len(MARKED))])
def test_marked_blocks_run_as_written(code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's `logitsam`
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=_workdir(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for run in re.findall(r"--train.output_dir=(\S+)", code):  # every run it names trained
        assert (tmp_path / run / "metrics.jsonl").exists(), run


def command_lines(text: str) -> list[list[str]]:
    """The argument lists of every `logitsam ...` command in the README's bash blocks (continuations
    joined, comments dropped; `accelerate launch ... -m logitsam` and `.venv/bin/logitsam` included)."""
    out = []
    for lang, code, _ in blocks(text):
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            # optional parts written [--opt value] count as given; "..." and --section.key=value are placeholders
            words = [w.strip("[]") for w in shlex.split(line, comments=True)]
            words = [w for w in words if w not in ("...", "--section.key=value", "|")]
            for i, w in enumerate(words):
                if w.endswith("logitsam") and (i == 0 or words[i - 1] == "-m"):
                    out.append(words[i + 1 :])
                    break
    return out


FIELDS = {
    f"{section.name}.{f.name}"
    for section in dataclasses.fields(C.Config)
    for f in dataclasses.fields(section.type if isinstance(section.type, type) else getattr(C, section.type))
}
PLACEHOLDER = re.compile(r"^[A-Z_]+$|^/path/")


@pytest.mark.parametrize("argv", command_lines(README), ids=lambda a: " ".join(a)[:60])
def test_every_command_line_names_real_commands_options_and_keys(argv):
    parser = cli.build_parser()
    args, rest = parser.parse_known_args(argv)
    if argv and argv[0] in ("train", "sft"):
        for word in rest:
            key = word[2:].split("=", 1)[0] if word.startswith("--") else None
            assert key is None or key in FIELDS, f"unknown config key {word!r}"
    else:
        assert not rest, f"unknown options {rest}"
    for name, value in vars(args).items():
        if name == "config" and isinstance(value, str) and not PLACEHOLDER.match(value):
            assert (ROOT / value).exists() or value.startswith("runs/"), f"--config {value} does not exist"
