"""Random kill points and corrupted bytes (hypothesis), on checkpoints written the way the Trainer writes them
(weights, optimizer, scheduler, RNG state, trainer_state.json, in that order, then the completion marker):

- a save killed anywhere — after any number of files, inside any file, during the marker's write, into a
  fresh folder or over an existing checkpoint of the same step — is never what ``last`` resumes from: it
  resumes from the previous complete checkpoint, or refuses with one line when there is none;
- any changed byte of a finished checkpoint is noticed, or the changed file still loads to the same content
  (e.g. a byte of zip padding): a resume never starts from silently different state.
"""

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_checkpoints import trainer_state

from logitsam.errors import ConfigError
from logitsam.training.checkpoints import checkpoint_problems, resolve_resume
from logitsam.training.commit import MARKER, AtomicCheckpoints

ORDER = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")
ARGS = type("Args", (), {"output_dir": "", "process_index": 0, "world_size": 1})
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(folder, name, version):
    """The file ``name`` of a checkpoint, its content depending on ``version`` (an old or new save)."""
    path = folder / name
    if name == "model.safetensors":
        save_file({"w": torch.full((8, 8), float(version))}, str(path))
    elif name == "trainer_state.json":
        path.write_text(trainer_state(6))
    else:
        torch.save({"name": name, "version": version, "state": torch.arange(64.0) * version}, path)


def _save(root, step, version, callback=None):
    """A complete, marked checkpoint (the callback's before-save and after-save calls around the writes)."""
    cb, args = callback or AtomicCheckpoints(), ARGS()
    args.output_dir, state = str(root), type("S", (), {"global_step": step})()
    cb.on_step_end(args, state, type("C", (), {"should_save": True})())
    folder = root / f"checkpoint-{step}"
    for name in ORDER:
        _write(folder, name, version)
    if step != 6:
        (folder / "trainer_state.json").write_text(trainer_state(step))
    cb.on_save(args, state, None)
    return folder


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@SETTINGS
@given(
    previous=st.booleans(),
    rewrite=st.booleans(),
    files_done=st.integers(0, len(ORDER)),
    cut=st.floats(0, 1, exclude_max=True),
    marker_tmp=st.booleans(),
)
def test_a_save_killed_anywhere_is_never_resumed_from(tmp_path_factory, previous, rewrite, files_done, cut, marker_tmp):
    root = tmp_path_factory.mktemp("kill")
    if previous:
        _save(root, 3, version=1)
    if rewrite:  # an earlier complete save of the same step (a resumed run saving step 6 again)
        _save(root, 6, version=2)
    # the save of step 6 (version 3), killed: the callback ran its before-save step, then HF wrote
    # files_done files whole and the next one up to ``cut`` of its bytes
    cb, args = AtomicCheckpoints(), ARGS()
    args.output_dir = str(root)
    cb.on_step_end(args, type("S", (), {"global_step": 6})(), type("C", (), {"should_save": True})())
    folder = root / "checkpoint-6"
    scratch = tmp_path_factory.mktemp("scratch")
    for i, name in enumerate(ORDER[: files_done + 1]):
        _write(scratch, name, 3)
        data = (scratch / name).read_bytes()
        (folder / name).write_bytes(data if i < files_done else data[: int(cut * len(data))])
    if files_done == len(ORDER) and marker_tmp:  # killed while writing the marker's temporary file
        (folder / f"{MARKER}-0-of-1.tmp").write_text('{"step": 6, "fi')
    before = _snapshot(root)
    assert checkpoint_problems(str(folder)), "a killed save must not count as complete"
    if previous:
        assert resolve_resume(str(root), "last") == str(root / "checkpoint-3")
    else:
        with pytest.raises(ConfigError) as e:
            resolve_resume(str(root), "last")
        assert "\n" not in str(e.value) and "overwrite_output_dir=true" in str(e.value)
    assert _snapshot(root) == before  # judging changes nothing


def _load(path):
    if path.suffix == ".safetensors":
        return {k: v.clone() for k, v in load_file(str(path)).items()}
    if path.suffix == ".json":
        return path.read_bytes()
    return torch.load(path, weights_only=True)


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


@pytest.mark.slow
@SETTINGS
@given(where=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255), data=st.data())
def test_any_changed_byte_is_noticed_or_harmless(tmp_path_factory, where, flip, data):
    """Marked: any byte of any file (all are digested whole at this size). Unmarked (plain HF): the torch
    files, which carry CRC-32s; safetensors data and trainer_state.json numbers have no checksum of their
    own, so a checkpoint without logitsam's marker cannot vouch for them."""
    marked = data.draw(st.booleans(), label="marked")
    name = data.draw(st.sampled_from(ORDER if marked else TORCH_FILES), label="name")
    root = tmp_path_factory.mktemp("bytes")
    _save(root, 3, version=1)
    folder = _save(root, 6, version=2)
    if not marked:  # a checkpoint written without logitsam's callback: its files alone decide
        (folder / f"{MARKER}-0-of-1").unlink()
    path = folder / name
    original = _load(path)
    raw = bytearray(path.read_bytes())
    at = int(where * len(raw))
    raw[at] ^= flip
    path.write_bytes(bytes(raw))
    problems = checkpoint_problems(str(folder))
    if marked:
        assert problems, "every byte of a marked checkpoint this small is in its digest"
    if not problems:  # unnoticed only if it changes nothing the Trainer would read
        try:
            assert _same(_load(path), original)
        except Exception as e:
            raise AssertionError(f"{name}: a changed byte at {at} passed and breaks loading") from e
    resumed = resolve_resume(str(root), "last")
    assert resumed == str(folder if not problems else root / "checkpoint-3")


def test_the_sentinel_marks_a_rewrite_in_progress(tmp_path):
    """A rewrite of a complete checkpoint is incomplete from the callback's before-save call until on_save."""
    folder = _save(tmp_path, 6, version=1)
    assert checkpoint_problems(str(folder)) == []
    cb, args = AtomicCheckpoints(), ARGS()
    args.output_dir = str(tmp_path)
    state = type("S", (), {"global_step": 6})()
    cb.on_step_end(args, state, type("C", (), {"should_save": True})())
    assert any("did not finish" in p for p in checkpoint_problems(str(folder)))
    cb.on_save(args, state, None)
    assert checkpoint_problems(str(folder)) == []
    assert not list(folder.glob(".logitsam-saving*"))
    shutil.rmtree(folder)
