"""Per-pair measurements of the responses during training (the Fig. 1c analogue, with intervals).

Δ± per pair = log π_t(y±) − log π_0(y±), with π_0 the model before its first step (the reference). A
:class:`Probe` callback measures fixed sets of tokenized pairs at fixed steps with
:func:`logitsam.diagnostics.responses.response_stats` (log-probs, top-token mass, entropy, regions).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from logitsam.diagnostics.responses import REGIONS, STATS, response_stats, split_regions

__all__ = ["REGIONS", "STATS", "Probe", "response_stats", "split_regions"]


class Probe(TrainerCallback):
    """Measures ``sets`` ({name: rows}) at the end of each step in ``steps``; results in ``self.records``
    as {step: {set name: response_stats}}. Before the last step only the first ``mid`` rows of each set
    are measured (None: all), so the trajectory is cheap and the end point has every pair."""

    def __init__(self, sets: dict[str, list[dict[str, Any]]], pad_id: int, steps: set[int], mid: int | None = None):
        self.sets, self.pad_id, self.steps, self.mid = sets, pad_id, steps, mid
        self.records: dict[int, dict[str, Any]] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        step = state.global_step
        if step in self.steps and model is not None:
            n = None if step == max(self.steps) else self.mid
            self.records[step] = {k: response_stats(model, r[:n], self.pad_id) for k, r in self.sets.items()}
