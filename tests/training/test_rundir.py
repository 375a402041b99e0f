"""Output directory: usable paths, refusal to mix with a previous run, the run lock."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from logitsam.errors import ConfigError
from logitsam.training import manifest
from logitsam.training.rundir import LOCK_NAME, RunLock, check_output_dir, claim, clear_previous_run, is_main_process


def write_lock(directory, pid, host=None):
    directory.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host or socket.gethostname(), "started": 0.0, "id": "x"}
    (directory / LOCK_NAME).write_text(json.dumps(info))
    return info


def enter(path, resuming=False, overwrite=False):
    with claim(str(path), resuming=resuming, overwrite=overwrite):
        pass


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("file", "is a file, not a directory"),
        ("file/sub/run", "which is a file"),
    ],
)
def test_unusable_paths(tmp_path, name, message):
    (tmp_path / "file").write_text("x")
    path = str(tmp_path / name) if name.strip() else name
    with pytest.raises(ConfigError, match=rf"train\.output_dir: .*{message}"):
        check_output_dir(path)
    with pytest.raises(ConfigError, match=message):
        enter(path)
    assert (tmp_path / "file").read_text() == "x"  # nothing written was touched


def test_a_directory_that_cannot_be_created():
    with pytest.raises(ConfigError, match=r"train\.output_dir: cannot create '/proc/logitsam-test/run'"):
        enter("/proc/logitsam-test/run", resuming=False, overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="is not writable"):
        check_output_dir(str(ro / "run"))


def test_previous_run_is_refused_unless_resuming_or_overwriting(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("old")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n')
    (out / "checkpoint-5").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds a previous run \(config\.yaml, metrics\.jsonl, checkpoint-5\)"):
        enter(str(out), resuming=False, overwrite=False)
    assert (out / "metrics.jsonl").exists() and (out / "checkpoint-5").exists()  # nothing lost
    with claim(str(out), resuming=True, overwrite=False):
        assert (out / "metrics.jsonl").exists()  # resuming keeps the records (trimmed elsewhere)
    with caplog.at_level(logging.WARNING), claim(str(out), resuming=False, overwrite=True):
        assert (out / "metrics.jsonl").exists()  # nothing removed while the new run is still being checked
        clear_previous_run(str(out))  # the run has checked everything and starts writing
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint-5").exists()
        clear_previous_run(str(out))  # once only (a no-op now)
    assert (out / "notes.txt").read_text() == "mine"  # files that are not a run's stay
    assert "removed the previous run's metrics.jsonl, checkpoint-5" in caplog.text
    with claim(str(tmp_path / "fresh"), resuming=False, overwrite=False):
        assert (tmp_path / "fresh" / LOCK_NAME).exists()
    assert not (tmp_path / "fresh" / LOCK_NAME).exists()


def test_lock_excludes_a_second_run_and_is_released_on_error(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), claim(out, resuming=False, overwrite=False):
        info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()}"):
            enter(out, resuming=True, overwrite=False)
        raise RuntimeError("boom")
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released although the run failed


def test_lock_of_a_live_process_or_another_host_is_respected(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "a", sleeper.pid)
        with pytest.raises(ConfigError, match=rf"in use by pid {sleeper.pid}.*delete the lock file"):
            enter(str(tmp_path / "a"), resuming=False, overwrite=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    write_lock(tmp_path / "b", dead_pid(), host="some-other-host")  # cannot tell: refuse
    with pytest.raises(ConfigError, match="on 'some-other-host'"):
        enter(str(tmp_path / "b"), resuming=False, overwrite=False)
    assert (tmp_path / "b" / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with caplog.at_level(logging.WARNING), claim(str(tmp_path), resuming=False, overwrite=False):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {tmp_path / LOCK_NAME} left by pid {pid}" in caplog.text
    assert not list(tmp_path.iterdir())  # released, no leftovers of the takeover


def test_release_never_removes_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    other = write_lock(tmp_path, 1, host="elsewhere")  # replaced behind our back
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other


@pytest.mark.parametrize("host", ["this", "elsewhere", None])
@pytest.mark.parametrize("pid", [-1, 0])
def test_a_lock_naming_no_process_is_stale(tmp_path, pid, host):
    """A pid ≤ 0 names no process on any host; a lock without a host (hand-made) is not 'in use' forever."""
    info = {"pid": pid, "started": 0} | (
        {} if host is None else {"host": socket.gethostname() if host == "this" else host}
    )
    (tmp_path / LOCK_NAME).write_text(json.dumps(info))
    with claim(str(tmp_path), resuming=False, overwrite=False):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("env", "main"),
    [
        ({"RANK": "1"}, True),  # a stray RANK without a launcher's WORLD_SIZE: still a plain process
        ({"RANK": "abc"}, True),
        ({"RANK": "1", "WORLD_SIZE": "abc"}, True),
        ({"RANK": "3", "WORLD_SIZE": "2"}, True),  # incoherent
        ({"RANK": "1", "WORLD_SIZE": "2"}, False),
        ({"RANK": "0", "WORLD_SIZE": "2"}, True),
    ],
)
def test_rank_is_trusted_only_from_a_coherent_launcher(monkeypatch, env, main):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_main_process() is main


def test_a_stray_rank_keeps_the_previous_run_check(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("x")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError), claim(str(tmp_path), resuming=False, overwrite=False):
        pass


def test_overwrite_removes_checkpoint_folders_only(tmp_path):
    """overwrite_output_dir removes the old checkpoint-N folders and metrics, never a user's checkpoint-notes.txt."""
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "model.safetensors").write_text("x")
    (tmp_path / "checkpoint-notes.txt").write_text("mine")
    (tmp_path / "metrics.jsonl").write_text("{}")
    (tmp_path / "model.safetensors").write_text("old weights")  # with save_model: false they would be stale
    for name in ("config.json", "tokenizer.json", "model-00001-of-00002.safetensors"):
        (tmp_path / name).write_text("old model")  # save_model's other files: stale too
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\ntags: [logitsam]\n---\n")  # our card:
    manifest.record(str(tmp_path), files=["README.md"])  # known by the run's manifest, not by its text
    with claim(str(tmp_path), resuming=False, overwrite=True):
        clear_previous_run(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-notes.txt"]
    (tmp_path / "README.md").write_text("# my notes about logitsam runs")  # not in a manifest: kept
    (tmp_path / "metrics.jsonl").write_text("{}")  # a previous run to overwrite
    with claim(str(tmp_path), resuming=False, overwrite=True):
        clear_previous_run(str(tmp_path))
    assert (tmp_path / "README.md").exists() and not (tmp_path / "metrics.jsonl").exists()
    (tmp_path / "metrics.jsonl").write_text("{}")
    with claim(str(tmp_path), resuming=False, overwrite=True):
        pass  # the start failed before writing: clear_previous_run never called
    assert (tmp_path / "metrics.jsonl").exists()
    clear_previous_run(str(tmp_path))  # outside a claim: nothing is pending
    assert (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_a_folder_where_a_run_writes_a_file_is_one_line(tmp_path, name):
    """A directory (or pipe) named metrics.jsonl / config.yaml used to be a traceback after config.yaml was rewritten."""
    (tmp_path / "run" / name).mkdir(parents=True)
    with pytest.raises(ConfigError, match=rf"{name}' is not a regular file"):
        check_output_dir(str(tmp_path / "run"))


def test_a_manifest_never_removes_outside_its_directory(tmp_path):
    """A damaged or hand-edited manifest: paths outside the directory, or the directory itself, are ignored."""
    run, outside = tmp_path / "run", tmp_path / "keep.txt"
    run.mkdir()
    outside.write_text("x")
    (run / "a.txt").write_text("ours")
    (run / manifest.MANIFEST).write_text(
        json.dumps({"files": ["../keep.txt", str(outside), "a.txt", 3], "trees": ["..", ".", "../run"]})
    )
    assert manifest.remove_recorded(str(run)) == ["a.txt"]
    assert outside.exists() and run.is_dir() and not (run / manifest.MANIFEST).exists()
    (run / manifest.MANIFEST).write_text("{not json")
    assert manifest.read(str(run)) == manifest.Manifest()  # unreadable: nothing is taken as ours
