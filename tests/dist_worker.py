"""Worker for test_distributed: trains the tiny recipe on this rank and writes a parameter digest."""

import hashlib
import os
import sys

import torch

from logitsam.config import schema as C
from logitsam.core.objective import Objective
from logitsam.training.run import train

PATHS: list[str] = []  # the objective's path (fused | logits) on every call of this rank


def _recording(call):
    def wrapped(self, *args, **kwargs):
        res = call(self, *args, **kwargs)
        PATHS.append(res.path)
        return res

    return wrapped


def digest(trainer) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards are DTensors
        h.update(name.encode())
        h.update(full.detach().cpu().to(torch.float64).numpy().tobytes())
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(sys.argv[1], f"rank{rank}.digest"), "w") as f:
        f.write(h.hexdigest())
    with open(os.path.join(sys.argv[1], f"rank{rank}.paths"), "w") as f:
        f.write(" ".join(sorted(set(PATHS))))


if __name__ == "__main__":
    Objective.__call__ = _recording(Objective.__call__)
    out = sys.argv[1]
    cfg = C.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny-cpu.yaml"))
    C.apply_overrides(
        cfg, [f"--train.output_dir={out}", "--train.max_steps=3", "--train.eval_steps=null", *sys.argv[2:]]
    )
    train(cfg, on_end=digest)
