"""One PNG that compares training runs from their ``metrics.jsonl`` (``logitsam plot``).

Eight panels, every run overlaid in its own colour (label: the directory name unless given):
loss; reward margin and accuracy; chosen and rejected drift vs the reference (train); top-token
probability; SAM losses (at W and W + ε); SAM norms (‖∇_W L‖, ‖ε‖); evaluation loss and margin;
chosen and rejected drift on the evaluation pairs (where squeezing shows, docs/design.md §6).
Within a panel the first metric is drawn solid, the second dashed. A panel whose metrics no run
logged says "not logged". Drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from logitsam.errors import UserError

Record = dict[str, Any]

# (title, ((metric key, legend name), ...), log-scale y when all values are positive)
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("loss", (("loss", "loss"),), False),
    ("reward margin and accuracy", (("rewards/margins", "margin"), ("rewards/accuracies", "accuracy")), False),
    ("drift vs reference (train)", (("logps/chosen_drift", "chosen"), ("logps/rejected_drift", "rejected")), False),
    ("top-token probability", (("probs/top_token", "top token"),), False),
    ("SAM losses", (("sam/loss_pre", "at W"), ("sam/loss_post", "at W + ε")), False),
    ("SAM norms", (("sam/grad_norm", "‖∇W L‖"), ("sam/eps_norm", "‖ε‖")), True),
    ("eval loss and margin", (("eval_loss", "loss"), ("eval_rewards/margins", "margin")), False),
    (
        "drift vs reference (eval)",
        (("eval_logps/chosen_drift", "chosen"), ("eval_logps/rejected_drift", "rejected")),
        False,
    ),
)
STYLES = ("-", "--")
ZERO_LINE = {"drift vs reference (train)", "drift vs reference (eval)"}

log = logging.getLogger(__name__)


def read_metrics(run_dir: str) -> list[Record]:
    """The records of ``<run_dir>/metrics.jsonl``; UserError naming the dir/file if absent or malformed."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir}: no metrics.jsonl in this directory (is it a logitsam run directory?)")
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.start} is not UTF-8); is it a metrics.jsonl?") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last and not line.endswith("}"):  # a run killed mid-write: plot the complete lines
                log.warning("%s:%d: an incomplete last line (a run stopped mid-write) is left out", path, i + 1)
                break
            raise UserError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{i + 1}: expected a JSON object per line")
        for key, value in rec.items():  # logitsam writes numbers only: anything else is not a metrics record
            if (value is not None and not isinstance(value, (int, float))) or (key == "step" and value is None):
                raise UserError(f"{path}:{i + 1}: field {key!r}: expected a number, got {value!r:.40}")
        if "step" not in rec:
            raise UserError(f"{path}:{i + 1}: field 'step': missing (every metrics record has its step)")
        records.append(rec)
    if not records:
        raise UserError(f"{path}: no records (the run logged nothing yet)")
    return records


def series(records: list[Record], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry a finite number under ``key`` and a step."""
    steps, values = [], []
    for r in records:
        v, s = r.get(key), r.get("step")
        ok_step = isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and 0 <= s < 2**53
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300 and ok_step:
            steps.append(float(s))
            values.append(float(v))
    return steps, values


def runs_figure(run_dirs: list[str], labels: list[str] | None = None) -> Any:
    """The matplotlib Figure (Agg canvas) of :func:`plot_runs`; one Axes per entry of ``PANELS``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not run_dirs:
        raise UserError("plot: give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise UserError(f"plot: {len(labels)} labels for {len(run_dirs)} run directories")
    names = labels or [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    runs = [read_metrics(d) for d in run_dirs]

    fig = Figure(figsize=(13, 15), layout="constrained")
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (title, metrics, log_y) in zip(fig.subplots(4, 2).flat, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        drawn: list[float] = []
        for name, records, color in zip(names, runs, colors, strict=True):
            for (key, short), style in zip(metrics, STYLES, strict=False):
                steps, values = series(records, key)
                if steps:
                    ax.plot(
                        steps,
                        values,
                        style,
                        color=color,
                        marker="." if len(steps) < 30 else None,
                        label=f"{name}: {short}",
                    )
                    drawn += values
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
            continue
        if title in ZERO_LINE:
            ax.axhline(0.0, color="0.6", linewidth=0.8, label="_zero")
        if log_y and min(drawn) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def plot_runs(run_dirs: list[str], out: str, labels: list[str] | None = None) -> str:
    """Draw the runs' ``metrics.jsonl`` curves into one figure at ``out`` (PNG; PDF, SVG, ... by its
    extension); returns ``out``.

    run_dirs: run output directories; labels: legend names (default: the directory names).
    Raises UserError for a directory without metrics.jsonl or a malformed record.
    """
    fmt = os.path.splitext(out)[1].lstrip(".").lower() or "png"
    fig = runs_figure(run_dirs, labels)
    if fmt not in fig.canvas.get_supported_filetypes():  # the name says which format: never PNG bytes in x.pdf
        known = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
        raise UserError(f"{out}: matplotlib cannot write .{fmt} files (it writes {known})")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        fig.savefig(out, format=fmt, dpi=100)
    except OSError as e:
        raise UserError(f"{out}: cannot write the plot: {e.strerror or e}") from None
    return out
