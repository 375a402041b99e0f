"""Two CPU processes (gloo) train the tiny recipe: both exit 0 and hold identical parameters.

FSDP2 runs too (the sharded path: full logits, logits-SAM by gram, the head never gathered) and
its losses equal DDP's (the fused path) step for step.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

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
    "fsdp": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/fsdp-cpu-2proc.yaml",
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
    cmd = [*LAUNCHERS[launcher], "tests/dist_worker.py", str(out_dir), *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "terminate called" not in out.stderr
    digests = [(out_dir / f"rank{r}.digest").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3
    return losses


@pytest.mark.parametrize("sam", [["--sam.rho=0"], ["--sam.rho=1e-2"], ["--sam.rho=1e-2", "--sam.mode=full"]])
def test_fsdp_on_two_cpu_processes_matches_ddp(tmp_path, sam):
    fsdp = run("fsdp", tmp_path / "fsdp", *sam)
    ddp = run("torchrun", tmp_path / "ddp", *sam)
    assert fsdp == pytest.approx(ddp, rel=1e-4)
