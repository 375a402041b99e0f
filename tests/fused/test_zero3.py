"""The fused head under DeepSpeed ZeRO-3 (issue 34), 2 CPU ranks (gloo): the head is gathered for the sweep only
and its gradient handed to DeepSpeed in the full shape its partitioned parameter takes; plain and logits-SAM
(weight, gram, chunked) losses and every parameter's gradient equal the full-logits path on the same sharded
engine and an unsharded copy (mean of both ranks' losses), tied and untied heads, and the recomputing
backward (the sums used by another loss) too. Needs ``pip install .[deepspeed]``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow  # two processes importing DeepSpeed: ~40 s each

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("mode", "tying"), [("released", "untied"), ("defaults", "tied")])
def test_zero3_fused_head_matches_full_logits_on_two_cpu_ranks(tmp_path, mode, tying):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tests/zero3_worker.py", str(tmp_path), mode, tying]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    for r in range(2):
        rec = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert rec.pop("landed")  # the backward gathered the head at least once for its gradient
        for name, v in rec.items():
            assert v["path"] == ("logits" if name.startswith("logits") else "fused"), name
            assert v["loss"] == pytest.approx(v["plain_loss"], rel=1e-6), name
            assert v["rel_vs_unsharded"] < 2e-6, (name, v)  # every parameter's gradient, float32
            if name != "fused_recompute":  # another loss: no full-logits twin on the engine
                assert v["rel_vs_logits"] < 2e-6, (name, v)
            assert v["head_grad_norm"] > 1e-2
            if mode == "released":  # DeepSpeed's defaults may keep it gathered past a step themselves
                assert v["released_after_step"], name  # nothing of ours kept the head gathered
        if mode == "released":  # the sweep found the head partitioned and gathered it itself
            assert all(rec[n]["partitioned_at_sweep"][0] for n in rec if n.startswith("fused_sam") or n == "fused")
