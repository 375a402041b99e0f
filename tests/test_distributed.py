"""Two CPU processes (gloo) train the tiny recipe: both exit 0 and hold identical parameters."""

import os
import subprocess
import sys

import pytest

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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*LAUNCHERS[launcher], "tests/dist_worker.py", str(tmp_path), sam]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "terminate called" not in out.stderr
    digests = [(tmp_path / f"rank{r}.digest").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    assert (tmp_path / "metrics.jsonl").read_text().count('"loss"') == 3
