"""The displacement experiment: the squeeze experiment's runs (train, probe, sample, judge, KL) on swap
pairs, with the pairs' control text probed beside them.

Probe sets: ``train`` (the first ``n_train_probe`` training pairs: the pairs trained on), ``control``
(two control texts of each probed training pair's prompt, in no pair) and ``heldout`` (swap pairs of
held-out prompts). Each set is measured at step 0 and at the probe steps (squeeze/probe.py).
"""

from __future__ import annotations

import os
from typing import Any

from experiments.displacement.pairs import control_rows, swap_pairs, training_rows
from experiments.records import write_jsonl
from experiments.squeeze.experiment import Experiment, Setting, Shared

# pairs made once per directory (settings take the first n_train) and the prompts they may come from
TRAIN_PAIRS = 256
CONTROLS = 64  # probed training pairs with control text (≥ n_train_probe)


def displacement_shared(**kw: Any) -> Shared:
    """The pilot's measurement sizes: 64 trained pairs and their control texts, 64 held-out pairs, 256 prompts."""
    return Shared(**{"n_heldout_pairs": 64, "n_train_probe": 64, "n_win_prompts": 256, **kw})


class DisplacementExperiment(Experiment):
    def swap(self, s: Setting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(training, held-out) swap pairs with their edits and control texts."""
        cache = os.path.join(self.out, "pairs")
        common = dict(model_id=self.sh.model, new_tokens=s.new_tokens, cache=cache)
        if s.n_train > TRAIN_PAIRS or self.sh.n_train_probe > CONTROLS:
            raise ValueError(f"n_train ≤ {TRAIN_PAIRS} and n_train_probe ≤ {CONTROLS} (the pairs made per directory)")
        tr = swap_pairs(
            self.sft, self.tok, list(self.split.train), self.reward, n_pairs=TRAIN_PAIRS, n_controls=CONTROLS, **common
        )
        ho = swap_pairs(
            self.sft, self.tok, list(self.split.heldout), self.reward, n_pairs=self.sh.n_heldout_pairs, seed=1, **common
        )
        return tr[: s.n_train], ho

    def pairs(self, s: Setting) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        tr, ho = self.swap(s)
        return training_rows(tr), training_rows(ho)

    def probe_sets(self, s: Setting) -> dict[str, list[dict[str, Any]]]:
        sets = super().probe_sets(s)
        tr, _ = self.swap(s)
        path = write_jsonl(
            control_rows(tr[: self.sh.n_train_probe]), os.path.join(self.out, "data", s.name, "control.jsonl")
        )
        sets["control"] = self.rows(path)
        return sets
