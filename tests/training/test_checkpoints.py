"""Checkpoint completeness, 'last' resolution, completion markers and metrics trimming (no training)."""

import dataclasses
import json
import logging
import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from logitsam.errors import ConfigError
from logitsam.training.checkpoints import checkpoint_problems, resolve_resume, trim_metrics, verify_checkpoint
from logitsam.training.commit import MARKER, AtomicCheckpoints

FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


def trainer_state(step):
    """What transformers.Trainer writes (TrainerState.save_to_json)."""
    from transformers import TrainerState

    state = TrainerState(global_step=step, max_steps=6, train_batch_size=2, epoch=step / 3, logging_steps=1)
    return json.dumps(dataclasses.asdict(state))


def fake_checkpoint(root, step, skip=()):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in FILES:
        if name not in skip:
            torch.save({"name": name, "state": torch.arange(4.0)}, path / name)
    if "model.safetensors" not in skip:
        save_file({"w": torch.ones(4, 4)}, str(path / "model.safetensors"))
    if "trainer_state.json" not in skip:
        (path / "trainer_state.json").write_text(trainer_state(step))
    return path


@pytest.mark.parametrize(
    ("skip", "missing"),
    [
        (("model.safetensors",), "model weights"),
        (("optimizer.pt",), "optimizer state (optimizer.pt)"),
        (("scheduler.pt",), "scheduler state (scheduler.pt)"),
        (("trainer_state.json",), "trainer_state.json"),
        (("rng_state.pth",), "RNG state"),
    ],
)
def test_verify_lists_what_is_missing(tmp_path, skip, missing):
    path = fake_checkpoint(tmp_path, 3, skip)
    with pytest.raises(
        ConfigError,
        match=rf"train\.resume_from_checkpoint: checkpoint .* is incomplete: missing .*{re.escape(missing)}",
    ):
        verify_checkpoint(str(path))
    verify_checkpoint(str(fake_checkpoint(tmp_path, 4)))  # complete: no error


def test_torn_trainer_state_and_everything_missing(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    (path / "trainer_state.json").write_text('{"global_st')  # killed while writing
    assert checkpoint_problems(str(path)) == ["trainer_state.json with global_step (missing or unreadable)"]
    (tmp_path / "empty").mkdir()
    assert len(checkpoint_problems(str(tmp_path / "empty"))) == 5


def test_last_skips_partial_checkpoints(tmp_path, caplog):
    fake_checkpoint(tmp_path, 3)
    fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 20, skip=("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"))
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(str(tmp_path), "last") == str(tmp_path / "checkpoint-10")  # numeric, not lexical
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-20" in caplog.text
    assert resolve_resume(str(tmp_path), True) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(str(tmp_path), None) is None and resolve_resume(str(tmp_path), False) is None


def test_incomplete_only_with_allow_incomplete(tmp_path, caplog):
    partial = fake_checkpoint(tmp_path, 7, skip=("optimizer.pt",))
    with pytest.raises(ConfigError, match=r"every checkpoint .* is incomplete .*resume_allow_incomplete"):
        resolve_resume(str(tmp_path), "last")
    with pytest.raises(ConfigError, match="incomplete: missing optimizer state"):
        resolve_resume(str(tmp_path), str(partial))
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(str(tmp_path), str(partial), allow_incomplete=True) == str(partial)
    assert "RESUMING FROM AN INCOMPLETE CHECKPOINT" in caplog.text


def test_bad_resume_values(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint-N directory"):
        resolve_resume(str(tmp_path), "last")
    with pytest.raises(ConfigError, match="'/nonexistent/checkpoint-1' not found"):
        resolve_resume(str(tmp_path), "/nonexistent/checkpoint-1")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a checkpoint directory"):
        resolve_resume(str(tmp_path), str(tmp_path / "f"))


def test_marker_protocol(tmp_path):
    """on_save marks a checkpoint complete; a save about to rewrite it unmarks it first; a file that
    changes afterwards (a second save killed half-way) makes it incomplete again."""
    cb = AtomicCheckpoints()
    path = fake_checkpoint(tmp_path, 3)
    args = SimpleNamespace(output_dir=str(tmp_path), process_index=0, world_size=1)
    state = SimpleNamespace(global_step=3)
    cb.on_save(args, state, SimpleNamespace(should_save=False))
    marker = path / f"{MARKER}-0-of-1"
    assert json.loads(marker.read_text())["files"]["optimizer.pt"] == (path / "optimizer.pt").stat().st_size
    assert checkpoint_problems(str(path)) == []
    cb.on_step_end(args, state, SimpleNamespace(should_save=False))
    assert marker.exists()
    cb.on_step_end(args, state, SimpleNamespace(should_save=True))
    assert not marker.exists()
    cb.on_save(args, state, None)
    (path / "optimizer.pt").write_bytes(b"x" * 3)  # truncated by a later interrupted write
    assert "optimizer.pt changed" in " ".join(checkpoint_problems(str(path)))


def test_markers_of_every_rank_are_needed(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    (path / "rng_state.pth").rename(path / "rng_state_0.pth")
    torch.save({"rank": 1}, path / "rng_state_1.pth")
    cb, state = AtomicCheckpoints(), SimpleNamespace(global_step=3)
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path), process_index=0, world_size=2), state, None)
    assert checkpoint_problems(str(path)) == ["completion markers of ranks [1] (save interrupted on those ranks)"]
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path), process_index=1, world_size=2), state, None)
    assert checkpoint_problems(str(path)) == []
    size = (path / "rng_state_1.pth").stat().st_size
    assert json.loads((path / f"{MARKER}-1-of-2").read_text())["files"] == {"rng_state_1.pth": size}


def test_trim_metrics(tmp_path):
    recs = [{"step": s, "loss": s / 10} for s in (1, 2, 3, 4, 5)] + [{"step": 3, "eval_loss": 1.0}]
    lines = [json.dumps(r) for r in recs]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # torn last line
    assert trim_metrics(str(tmp_path), 3) == 3
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3, 3] and kept[-1] == {"step": 3, "eval_loss": 1.0}
    assert trim_metrics(str(tmp_path), 3) == 0
    assert trim_metrics(str(tmp_path / "nowhere"), 3) == 0


def _damage_weights(path, how):
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(raw[: len(raw) - 8])
    elif how == "header":  # the 8-byte length, then JSON that is not
        weights.write_bytes(raw[:8] + b"{garbage" + raw[16:])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "shard":  # a second weights file (sharded or adapter) that is broken
        (path / "model-00002-of-00002.safetensors").write_bytes(raw[:20])


@pytest.mark.parametrize("how", ["truncated", "header", "empty", "shard"])
def test_unreadable_weights_make_a_checkpoint_incomplete(tmp_path, caplog, how):
    fake_checkpoint(tmp_path, 3)
    broken = fake_checkpoint(tmp_path, 6)
    _damage_weights(broken, how)
    problems = checkpoint_problems(str(broken))
    assert len(problems) == 1 and problems[0].startswith("readable weights (") and "truncated or corrupt" in problems[0]
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(str(tmp_path), "last") == str(tmp_path / "checkpoint-3")  # skipped by last
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    with pytest.raises(ConfigError, match=r"checkpoint-6' is incomplete: missing readable weights \(.*model"):
        resolve_resume(str(tmp_path), str(broken))  # refused when named


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (
            {"global_step": 6},
            "lacks max_steps, train_batch_size, epoch, logging_steps, eval_steps, save_steps, log_history",
        ),
        ({**json.loads(trainer_state(6)), "train_batch_size": None}, "bad train_batch_size"),
        ({**json.loads(trainer_state(6)), "epoch": "one"}, "bad epoch"),
        ({**json.loads(trainer_state(6)), "log_history": {"step": 1}}, "bad log_history"),
        ({**json.loads(trainer_state(6)), "stateful_callbacks": [1]}, "TrainerState loads (All callbacks passed"),
        (
            {**json.loads(trainer_state(6)), "no_such_field": 1},
            "a trainer_state.json that transformers' TrainerState loads",
        ),
        (
            {**json.loads(trainer_state(6)), "global_step": -1},
            "trainer_state.json with global_step (missing or unreadable)",
        ),
        ([6], "trainer_state.json with global_step (missing or unreadable)"),
    ],
)
def test_trainer_state_must_hold_what_the_trainer_reads(tmp_path, state, problem):
    path = fake_checkpoint(tmp_path, 6)
    (path / "trainer_state.json").write_text(json.dumps(state))
    problems = checkpoint_problems(str(path))
    assert len(problems) == 1 and problem in problems[0], problems
    with pytest.raises(ConfigError, match="is incomplete: missing"):
        verify_checkpoint(str(path))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_same_size_garbage_after_completion_is_noticed(tmp_path, name, where):
    """The marker holds sampled content digests: garbage of the same size written over any checkpoint
    file (at its start, middle or end) makes the checkpoint incomplete, before anything is touched."""
    path = fake_checkpoint(tmp_path, 3)
    big = path / "optimizer.pt"
    torch.save(torch.arange(1_250_000, dtype=torch.float32), big)  # 5 MB: sampled, not read whole
    AtomicCheckpoints().on_save(
        SimpleNamespace(output_dir=str(tmp_path), process_index=0, world_size=1), SimpleNamespace(global_step=3), None
    )
    assert checkpoint_problems(str(path)) == []
    f = path / name
    data = bytearray(f.read_bytes())
    at = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    if name == "optimizer.pt" and where == "middle":
        at = (len(data) - (1 << 16)) * 7 // 15 + 5  # inside a sampled block
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))
    assert f"{name} changed" in " ".join(checkpoint_problems(str(path)))


def test_global_step_must_be_the_checkpoints_own(tmp_path):
    """A same-size edit of trainer_state.json's global_step (4 → 7) would skip steps on resume."""
    path = fake_checkpoint(tmp_path, 4)
    (path / "trainer_state.json").write_text(trainer_state(7))
    assert "global_step 7 in checkpoint-4" in " ".join(checkpoint_problems(str(path)))


@pytest.mark.parametrize("skip", [("model.safetensors",), ("trainer_state.json",)])
def test_a_first_checkpoint_killed_mid_save_points_to_overwrite(tmp_path, skip):
    """Killed during the first save: nothing is resumable, so the message says how to start over and
    resume_allow_incomplete does not pretend otherwise (it used to end in transformers' traceback)."""
    partial = fake_checkpoint(tmp_path, 3, skip=skip)
    with pytest.raises(ConfigError, match=r"nothing in it can be resumed.*overwrite_output_dir=true") as e:
        resolve_resume(str(tmp_path), "last")
    assert "resume_allow_incomplete=true to" not in str(e.value)
    for value in ("last", str(partial)):
        with pytest.raises(ConfigError, match=r"cannot be resumed|nothing in it can be resumed"):
            resolve_resume(str(tmp_path), value, allow_incomplete=True)


def _mark(root, step):
    AtomicCheckpoints().on_save(
        SimpleNamespace(output_dir=str(root), process_index=0, world_size=1), SimpleNamespace(global_step=step), None
    )


def test_a_flipped_exponent_between_the_sampled_blocks_is_refused_naming_the_file(tmp_path, caplog):
    """Weights over 1 MiB were checked by size, header and 16 sampled 64 KiB blocks: one flipped exponent
    byte between them resumed silently from corrupted weights. The marker holds each file's full SHA-256."""
    fake_checkpoint(tmp_path, 3)
    path = fake_checkpoint(tmp_path, 6)
    weights = path / "model.safetensors"
    save_file({"w": torch.ones(1024, 1024)}, str(weights))  # 4 MiB of float32 1.0 (bytes 00 00 80 3f)
    _mark(tmp_path, 6)
    assert checkpoint_problems(str(path)) == []
    raw = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    block, gap = 1 << 16, (len(raw) - (1 << 16)) // 15  # the sampled blocks start every `gap` bytes
    at = header + (block + gap // 2 - header) // 4 * 4 + 3  # the exponent byte of a float between blocks 0 and 1
    assert raw[at] == 0x3F and block < at < gap
    raw[at] ^= 0x01  # 1.0 -> 0.25
    weights.write_bytes(bytes(raw))
    assert any("model.safetensors" in p for p in checkpoint_problems(str(path)))
    with pytest.raises(ConfigError, match=r"checkpoint-6' is incomplete: .*model\.safetensors"):
        resolve_resume(str(tmp_path), str(path))
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(str(tmp_path), "last") == str(tmp_path / "checkpoint-3")
    assert "checkpoint-6" in caplog.text and "model.safetensors" in caplog.text


def test_markers_without_full_digests_still_resume_with_their_own_checks(tmp_path):
    """Checkpoints marked before full digests (sampled digests, or sizes only) stay resumable."""
    from logitsam.training.commit import sampled_digest

    path = fake_checkpoint(tmp_path, 3)
    _mark(tmp_path, 3)
    marker = path / f"{MARKER}-0-of-1"
    record = json.loads(marker.read_text())
    files = record["files"]
    old = {"step": 3, "files": files, "digests": {n: sampled_digest(str(path / n)) for n in files}}
    marker.write_text(json.dumps(old))
    assert checkpoint_problems(str(path)) == []
    state = (path / "trainer_state.json").read_bytes()
    (path / "trainer_state.json").write_bytes(state.replace(b'"epoch": 1.0', b'"epoch": 2.0'))  # digested whole
    assert "trainer_state.json changed" in " ".join(checkpoint_problems(str(path)))
    (path / "trainer_state.json").write_bytes(state)
    marker.write_text(json.dumps({"step": 3, "files": files}))  # the oldest markers: sizes only
    assert checkpoint_problems(str(path)) == []
