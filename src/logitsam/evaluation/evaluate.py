"""Evaluate trained models: sample on a prompt file, judge against a baseline, report win rates, KL, lengths.

What ``logitsam evaluate`` runs. Every model samples the same prompts with the same sampling seed
(common random numbers: two models that agree produce the same text). Each sample is judged against
the baseline's response to the same prompt — the data's chosen response or a baseline model's
sample — with any judge of judges.py (ties ½, judge failures left out and counted). Win rates get a
95% percentile-bootstrap interval over prompts; KL(π‖π_ref) is the mean of log π(y|x) − log π_ref(y|x)
over the model's own samples (Monte Carlo); mean response lengths are reported beside every win
rate because judges favour length. Everything needed to recompute the table is written:
``samples/<name>.jsonl`` per model and ``results.json`` (per-prompt outcomes, rewards, KL values).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from logitsam.config.schema import ModelConfig
from logitsam.data.examples import load_examples
from logitsam.data.files import read_rows, read_text
from logitsam.errors import DataError
from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.winrate import bootstrap, judge_counts, judge_warning, sequence_kl_values
from logitsam.models import load_model, load_tokenizer


@dataclass
class EvalSettings:
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    seed: int = 0
    batch_size: int = 16
    chat: bool = False
    device: str = "cpu"
    dtype: str = "float32"


def read_prompts(path: str) -> tuple[list[str], list[str | None]]:
    """(prompts, chosen responses or None) of a prompt file.

    ``.txt``: one prompt per line (blank lines skipped). Any data file logitsam reads (JSONL, JSON, CSV,
    Parquet, ...): rows with a ``prompt`` string and optionally ``chosen`` (other keys ignored), or
    any preference format (HH transcripts, message lists with one user turn).
    """
    if not os.path.exists(path):
        raise DataError(path, None, None, "no such prompt file")
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise DataError(path, None, None, "not a regular file (a pipe or a device?); give a prompt file")
    if path.endswith(".txt"):
        prompts = [line.rstrip("\r") for line in read_text(path).split("\n") if line.strip()]
        if not prompts:
            raise DataError(path, None, None, "no prompts (one per line)")
        return prompts, [None] * len(prompts)
    rows = list(read_rows(path))
    if not rows:
        raise DataError(path, None, None, "no rows")
    if not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) and "rejected" not in r for _, r in rows):
        return _from_examples(path)
    prompts, chosen = [], []
    for line, row in rows:
        if not row["prompt"].strip():
            raise DataError(path, line, "prompt", "empty")
        if row.get("chosen") is not None and not isinstance(row["chosen"], str):
            raise DataError(path, line, "chosen", f"expected a string, got {type(row['chosen']).__name__}")
        prompts.append(row["prompt"])
        chosen.append(row.get("chosen"))
    return prompts, chosen


def uses_chat_template(path: str) -> bool:
    """Whether training would render this prompt file's prompts with the chat template: rows whose prompt is
    a message list (conversational / UltraFeedback data); text prompts and ``.txt`` files are used as written."""
    if path.endswith(".txt"):
        return False
    rows = list(read_rows(path))
    if all(isinstance(r, dict) and isinstance(r.get("prompt"), str) and "rejected" not in r for _, r in rows):
        return False
    return any(isinstance(e.prompt, list) for e in load_examples([path]))


def _from_examples(path: str) -> tuple[list[str], list[str | None]]:
    prompts = []
    examples = load_examples([path])
    for e in examples:
        if isinstance(e.prompt, list):
            if len(e.prompt) != 1 or e.prompt[0].get("role") != "user":
                raise DataError(e.source or path, None, "prompt", "a multi-turn prompt; evaluate takes one user turn")
            prompts.append(str(e.prompt[0]["content"]))  # with --chat the model's template wraps it again
        else:
            prompts.append(e.prompt)
    return prompts, [e.chosen if isinstance(e.chosen, str) else str(e.chosen["content"]) for e in examples]


BASELINE = "baseline"  # samples/baseline.jsonl holds the baseline model's samples: no model gets this label


def short_name(model: str) -> str:
    """A file-safe label of a model path or name (its last path parts)."""
    parts = [p for p in model.replace("\\", "/").split("/") if p not in ("", ".")]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "_".join(parts[-2:]) or model)


def _load(name: str, settings: EvalSettings) -> tuple[Any, Any]:
    cfg = ModelConfig(name_or_path=name, dtype=settings.dtype)
    tok = load_tokenizer(cfg)
    return load_model(cfg, vocab_size=len(tok)).to(settings.device).eval(), tok


def _sample(model: Any, tok: Any, prompts: list[str], s: EvalSettings, name: str) -> tuple[list[str], list]:
    return generate(  # type: ignore[return-value]
        model, tok, prompts, s.decode, batch_size=s.batch_size, seed=s.seed, chat=s.chat, desc=name, return_ids=True
    )


def write_samples(path: str, prompts: list[str], samples: list[str], model: str, s: EvalSettings) -> None:
    """One JSON object per prompt: index, prompt, response, model and the decoding that made it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    meta = {"model": model, "seed": s.seed, "chat": s.chat, **asdict(s.decode)}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for i, (p, r) in enumerate(zip(prompts, samples, strict=True)):
            f.write(json.dumps({"index": i, "prompt": p, "response": r, **meta}) + "\n")
    os.replace(path + ".tmp", path)


def evaluate_models(
    models: list[str],
    prompts: list[str],
    out: str,
    *,
    chosen: list[str | None] | None = None,
    baseline: str = "chosen",
    judge: Any = None,
    reference: str | None = None,
    settings: EvalSettings | None = None,
    samples_only: bool = False,
) -> dict[str, Any]:
    """Sample every model on ``prompts`` into ``out/samples``; with a judge, win rates against ``baseline``
    ("chosen": the data's chosen responses, else a model whose samples are the baseline) and KL to
    ``reference`` (default: the baseline model; none when the baseline is "chosen" and no reference is
    given). Returns the results (also in ``out/results.json``, unless ``samples_only``: ``generate``)."""
    s = settings or EvalSettings()
    res: dict[str, Any] = {"prompts": prompts, "baseline": baseline, "settings": asdict(s), "models": {}}
    base_texts: list[str] | None = None
    if judge is not None:
        if baseline == "chosen":
            if chosen is None or any(c is None for c in chosen):
                raise ValueError("baseline 'chosen' needs a chosen response for every prompt")
            base_texts = list(chosen)  # type: ignore[arg-type]
        else:
            m, tok = _load(baseline, s)
            base_texts, _ = _sample(m, tok, prompts, s, f"{short_name(baseline)} (baseline)")
            write_samples(os.path.join(out, "samples", f"{BASELINE}.jsonl"), prompts, base_texts, baseline, s)
            del m
    ref_name = reference or (None if baseline == "chosen" else baseline)
    ref = _load(ref_name, s)[0] if ref_name is not None and judge is not None else None
    res["reference"] = ref_name if ref is not None else None
    names = sample_labels(models)
    for model_name, label in zip(models, names, strict=True):
        model, tok = _load(model_name, s)
        texts, ids = _sample(model, tok, prompts, s, label)
        write_samples(os.path.join(out, "samples", f"{label}.jsonl"), prompts, texts, model_name, s)
        row: dict[str, Any] = {"model": model_name, "samples": texts}
        row["tokens"] = [len(g) for _, g in ids]
        row["words"] = [len(t.split()) for t in texts]
        if judge is not None and base_texts is not None:
            row["outcomes"] = [float(x) for x in judge.compare(prompts, texts, base_texts)]
            scores = getattr(judge, "last_scores", None)  # a scoring judge's own numbers, per prompt
            if scores is not None:
                row["judge_scores"], res["baseline_scores"] = list(scores[0]), list(scores[1])
            row["win"] = bootstrap(row["outcomes"], seed=s.seed).to_dict()
            row.update(judge_counts(row["outcomes"], texts, base_texts, getattr(judge, "last", None)))
            warning = judge_warning(label, row)
            if warning:  # most pairs failed or tied: said beside the numbers, in results.json and report.md
                row["warning"] = warning
                res.setdefault("warnings", []).append(warning)
        if ref is not None:
            row["kl_values"] = sequence_kl_values(model, ref, ids, tok.pad_token_id, batch_size=s.batch_size)
            row["kl"] = sum(row["kl_values"]) / max(1, len(row["kl_values"]))
        res["models"][label] = row
        del model
    if base_texts is not None:
        res["baseline_words"] = [len(t.split()) for t in base_texts]
    if not samples_only:
        _write_json(os.path.join(out, "results.json"), res)
    return res


def sample_labels(models: list[str]) -> list[str]:
    """File-safe labels of ``models`` (``samples/<label>.jsonl``, results.json's keys), unique by construction:
    never ``baseline`` (the baseline's file) and distinct ignoring case (some file systems do)."""
    taken, out = {BASELINE}, []
    for model in models:
        base = short_name(model)
        label, n = base, 1
        while label.lower() in taken:
            n += 1
            label = f"{base}-{n}"
        taken.add(label.lower())
        out.append(label)
    return out


def written_files(
    models: list[str], *, judged: bool, baseline: str = "chosen", samples_only: bool = False
) -> list[str]:
    """The files (relative to ``out``) that :func:`evaluate_models` and :func:`write_eval_report` write."""
    names = [] if samples_only else ["results.json", "report.md", *(["win_rates.png"] if judged else [])]
    sampled = [*sample_labels(models), *([BASELINE] if judged and baseline != "chosen" else [])]
    return names + [os.path.join("samples", f"{label}.jsonl") for label in sampled]


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs))


def report_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: win rate [95% CI] (%), judge failures, KL, mean words and tokens."""
    rows = []
    for label, r in res["models"].items():
        row = {"model": label, "words": _mean(r["words"]), "tokens": _mean(r["tokens"])}
        if "win" in r:
            row.update(win=r["win"], failures=r["failures"], ties=r.get("ties", "–"))
            row.update({k: r[k] for k in ("truncated", "responses_cut", "warning") if k in r})
        if "kl" in r:
            row["kl"] = r["kl"]
        rows.append(row)
    return rows


def write_eval_report(out: str, res: dict[str, Any], judge_name: str) -> str:
    """report.md (and win_rates.png when judged) of an evaluation; returns report.md's path."""
    rows = report_rows(res)
    n = len(res["prompts"])
    base = "the data's chosen responses" if res["baseline"] == "chosen" else f"samples of `{res['baseline']}`"
    lines = ["# logitsam evaluate", ""]
    if "win" not in rows[0]:
        lines += [f"Samples of {len(rows)} model(s) on {n} prompts (no judge: `samples/*.jsonl`).", ""]
    else:
        ref = f"`{res['reference']}`" if res["reference"] else "none given"
        lines += [
            f"{n} prompts; judge: {judge_name}; baseline: {base}; win rate = P(model's response beats the baseline's), "
            "ties ½, 95% percentile-bootstrap interval over prompts; judge failures left out (both counted beside "
            "it). KL(π‖π_ref): mean "
            f"of log π(y|x) − log π_ref(y|x) over the model's samples (reference: {ref}). Lengths beside win rates "
            f"because judges favour length (baseline: {_mean(res.get('baseline_words', [])):.1f} words).",
            "",
        ]
    lines += [f"**Warning:** {r['warning']}." for r in rows if "warning" in r]
    lines += [""] if any("warning" in r for r in rows) else []
    lines += [
        "| model | win rate % [95% CI] | judge failures | ties | KL | mean words | mean tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        win = (
            f"{100 * r['win']['mean']:.1f} [{100 * r['win']['low']:.1f}, {100 * r['win']['high']:.1f}]"
            if "win" in r
            else "–"
        )
        kl = f"{r['kl']:.3f}" if "kl" in r else "–"
        lines.append(
            f"| {r['model']} | {win} | {r.get('failures', '–')} | {r.get('ties', '–')} | {kl} | {r['words']:.1f} "
            f"| {r['tokens']:.1f} |"
        )
    cut = [r for r in rows if r.get("truncated")]
    lines += [""] if cut else []
    lines += [
        f"{r['model']}: {r['truncated']} of {n} comparisons longer than the reward model takes (the prompt's start "
        f"dropped; {r.get('responses_cut', 0)} with a response that alone did not fit)."
        for r in cut
    ]
    if "win" in rows[0]:
        lines += ["", f"![win rates]({_plot(out, rows)})"]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _plot(out: str, rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    means = [100 * r["win"]["mean"] for r in rows]
    err = [[m - 100 * r["win"]["low"] for m, r in zip(means, rows, strict=True)],
           [100 * r["win"]["high"] - m for m, r in zip(means, rows, strict=True)]]  # fmt: skip
    ax.bar(range(len(rows)), means, yerr=err, capsize=4, color="tab:blue")
    ax.axhline(50, color="gray", lw=0.7)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="win rate vs baseline (%)", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "win_rates.png"), dpi=110)
    plt.close(fig)
    return "win_rates.png"
