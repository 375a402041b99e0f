"""Two CPU processes (gloo) train the tiny recipe: both exit 0 and hold identical parameters.

FSDP2 (torch's ``fully_shard`` on gloo: accelerate does not shard on CPU) runs the objective on the
fused path — the head's unit unsharded for the sweep, its gradient reduce-scattered by FSDP — and
its losses and trained parameters equal an unsharded model's trained as DDP would, step for step.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TESTS

pytestmark = pytest.mark.slow  # trains or launches processes: `pytest -m 'not slow'` skips it

LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/cpu-2proc.yaml",
    ],
}


@pytest.mark.parametrize(
    ("launcher", "sam"),
    [("torchrun", "--sam.rho=1e-4"), ("torchrun", "--sam.method=gram"), ("accelerate", "--sam.rho=1e-4")],
)
def test_two_process_ddp_on_cpu(tmp_path, launcher, sam):
    run(launcher, tmp_path, sam)


def run(launcher, out_dir, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [*LAUNCHERS[launcher], str(TESTS / "dist_worker.py"), str(out_dir), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "terminate called" not in out.stderr
    digests = [(out_dir / f"rank{r}.digest").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3
    assert {(out_dir / f"rank{r}.paths").read_text() for r in range(2)} == {"fused"}  # no (S, T, V) logits
    return losses


@pytest.mark.parametrize(
    ("rho", "reshard", "method"),
    [("0", "auto", "auto"), ("1e-2", "explicit", "auto"), ("1e-2", "explicit", "gram"), ("1e-2", "auto", "weight")],
)
def test_fsdp2_on_two_cpu_processes_fuses_and_matches_ddp(tmp_path, rho, reshard, method):
    """The head is fused under FSDP2 (no (S, T, V) logits) and trains exactly as without sharding;
    "explicit": the root reshards after forward, so the objective must gather the head itself."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [*LAUNCHERS["torchrun"], str(TESTS / "fsdp2_worker.py"), str(tmp_path), rho, reshard, method]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rec in recs:
        assert rec["paths"] == ["fused"] * 3
        assert rec["head_sharded_at_sweep"] == [reshard == "explicit"] * 3
        assert rec["losses"] == pytest.approx(rec["plain_losses"], rel=1e-5)
        assert max(rec["rel_diff"].values()) < 1e-5, rec["rel_diff"]
        assert rec["moved"]["lm_head.weight"] > 1e-2  # the head trained (its gradient reached the shards)


def test_fsdp2_bf16_mixed_precision_fused_matches_full_logits(tmp_path):
    """MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): the fused head (plain and logits-SAM by each
    method) runs on the bf16 unsharded head and matches the full-logits path of the same step within bf16's
    accuracy: losses to 1e-2 relative, every parameter's gradient to 3e-2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [*LAUNCHERS["torchrun"], str(TESTS / "fsdp2_mp_worker.py"), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for r in range(2):
        rec = json.loads((tmp_path / f"rank{r}.json").read_text())
        for name, v in rec.items():
            assert v["path"] == ("logits" if name.startswith("logits") else "fused"), name
            assert v["head_dtype"] == "torch.bfloat16" and v["grad_dtype"] == "torch.float32"
            base = rec["logits_sam" if "sam" in name else "logits"]
            assert v["loss"] == pytest.approx(base["loss"], rel=1e-2), name
            assert v["rel_vs_logits"] < 3e-2, (name, v["rel_vs_logits"])
            assert v["head_grad_norm"] > 1e-2
        assert rec["fused_sam_weight"]["loss"] > rec["fused"]["loss"]  # ε moved the loss (ρ > 0 ascends)
