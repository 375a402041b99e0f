"""The reference log-prob cache is keyed by model content, and unusable cache files are recomputed."""

import logging
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FIXTURES
from logitsam.data.batching import tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.models import tiny_model, tiny_tokenizer
from logitsam.training import reference as R


@pytest.fixture
def rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITSAM_CACHE", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    out, _ = tokenize_examples(tok, load_examples([str(FIXTURES / "explicit.jsonl")])[:3], 512, 384)
    assert len(out) == 3
    return out, tok.eos_token_id


def attach(model, rows, model_id):
    data, pad = rows
    fresh = [dict(r) for r in data]
    path = R.attach_reference_logps(model, model_id, fresh, pad, batch_size=2)
    return torch.tensor([r["ref_logps"] for r in fresh]), path


def saved_model(path, seed):
    tiny_model(len(tiny_tokenizer()), seed=seed).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


def test_a_different_model_at_the_same_path_is_not_reused(tmp_path, rows):
    model_dir = str(tmp_path / "ref")
    model_id = f"{model_dir}:float32"  # what run.train passes: path and dtype only
    a = saved_model(model_dir, seed=0)
    va, path_a = attach(a, rows, model_id)
    b = saved_model(model_dir, seed=1)  # overwrite the directory with another model
    vb, path_b = attach(b, rows, model_id)
    live_b = R.compute_reference_logps(b, rows[0], rows[1], batch_size=2)
    assert path_a != path_b and os.path.exists(path_a) and os.path.exists(path_b)
    assert not torch.allclose(va, vb)
    assert torch.equal(vb, live_b)


def test_same_content_hits_the_cache(tmp_path, rows, monkeypatch):
    model = saved_model(str(tmp_path / "ref"), seed=0)
    first, path = attach(model, rows, "m")
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ref"))

    def never(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(R, "compute_reference_logps", never)
    again, path2 = attach(reloaded, rows, "m")
    assert path2 == path and torch.equal(first, again)


def test_fingerprint_sees_small_changes_dtype_and_config():
    model = tiny_model(len(tiny_tokenizer()), seed=0)
    base = R.model_fingerprint(model)
    assert R.model_fingerprint(tiny_model(len(tiny_tokenizer()), seed=0)) == base  # deterministic
    w = model.model.embed_tokens.weight.view(-1)
    assert w.numel() > 4096  # sampled, not hashed whole
    sampled = set(R.sample_indices(w.numel(), 4096).tolist())
    with torch.no_grad():
        w[min(set(range(w.numel())) - sampled)] += 1e-3  # a value the strided sample does not hit
    assert R.model_fingerprint(model) != base
    assert R.model_fingerprint(tiny_model(len(tiny_tokenizer()), seed=0, dtype=torch.bfloat16)) != base
    other = tiny_model(len(tiny_tokenizer()), seed=0)
    other.config.rope_theta = 1234.0  # same weights, different outputs
    assert R.model_fingerprint(other) != base


def test_fingerprint_samples_stay_in_bounds_for_large_tensors():
    # SmolLM2's embedding: a float32 linspace put the last index at n, one past the end
    for n in (28311552, 2**24 + 1, 4097, 4096 * 7 + 3):
        idx = R.sample_indices(n, 4096)
        assert idx[0] == 0 and idx[-1] == n - 1 and len(idx) == 4096
        assert bool((idx[1:] > idx[:-1]).all())


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "wrong_shape", "pickle", "replaced", "nan_with_checksum", "no_checksum"]
)
def test_unusable_cache_files_are_recomputed(tmp_path, rows, caplog, damage):
    model = tiny_model(len(tiny_tokenizer()), seed=0)
    good, path = attach(model, rows, "m")
    if damage == "garbage":
        Path(path).write_bytes(b"\x00not a torch file")
    elif damage == "truncated":
        Path(path).write_bytes(Path(path).read_bytes()[:300])
    elif damage == "wrong_shape":
        torch.save(torch.zeros(7, 2), path)
    elif damage == "replaced":  # other values of the right shape and dtype
        torch.save(good + 0.5, path)
    elif damage == "nan_with_checksum":  # non-finite values are refused even with a matching checksum
        bad = good.clone()
        bad[1, 0] = float("nan")
        torch.save(bad, path)
        Path(path).with_suffix(".sha256").write_text(R.checksum(Path(path).stem, bad))
    elif damage == "no_checksum":  # e.g. written by an older version
        Path(path).with_suffix(".sha256").unlink()
    else:  # arbitrary objects are refused by weights_only=True, never unpickled
        torch.save({"values": logging.getLogger("x")}, path)
    with caplog.at_level(logging.WARNING):
        again, _ = attach(model, rows, "m")
    assert "recomputing" in caplog.text
    assert torch.equal(again, good)
    assert torch.equal(torch.load(path, weights_only=True), good)  # the cache file is repaired
    assert Path(path).with_suffix(".sha256").read_text().strip() == R.checksum(Path(path).stem, good)
