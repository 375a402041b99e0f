"""``logitsam displacement RUN_DIR``: likelihood displacement on a run's own trained pairs, told apart from drift.

For a finished run (its saved model) or a running one (its newest checkpoint), against the model it
started from (``model.name_or_path`` of its config.yaml):
- Δ± per pair on a sample of the pairs it trains on (the eval split of ``data.eval_fraction`` excluded),
  with the share of pairs whose chosen response fell and where the fall sits (shared prefix / differing
  tokens / shared suffix of the pair's two responses);
- control text: the starting model's own samples of those prompts, in no pair; their drift is the
  policy's general movement, and minus its mean is a Monte-Carlo estimate of KL(π₀‖π); the reverse KL(π‖π₀)
  from the trained model's samples;
- CHES (Razin et al. 2024; diagnostics/ches.py) of every sampled pair under the starting model, its rank
  correlation with Δ+, and the pairs most likely to displace — a ranking that needs no trained model,
  so it also screens a dataset before training (``--data`` with ``--model``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from logitsam.config import schema as config_mod
from logitsam.config.schema import ModelConfig
from logitsam.data.batching import tokenize_examples
from logitsam.data.examples import load_examples
from logitsam.diagnostics.ches import ches_scores
from logitsam.diagnostics.responses import REGIONS, response_stats
from logitsam.errors import ConfigError
from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.winrate import sequence_kl_values, t_quantile
from logitsam.models import load_model, load_tokenizer
from logitsam.training.checkpoints import WEIGHTS, list_checkpoints
from logitsam.training.run import split_eval


def trained_model_of(run_dir: str) -> str | None:
    """The run's saved model (RUN_DIR itself) or, while it runs, its newest checkpoint; None when neither."""
    for d in [run_dir, *list_checkpoints(run_dir)]:
        if any(os.path.exists(os.path.join(d, w)) for w in WEIGHTS):
            return d
    return None


def _mean_ci(v: list[float]) -> dict[str, float]:
    """Mean with a 95% t interval over pairs (no interval for one value)."""
    n = len(v)
    m = sum(v) / max(1, n)
    if n < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "n": n}
    half = t_quantile(n - 1) * (sum((x - m) ** 2 for x in v) / (n - 1)) ** 0.5 / n**0.5
    return {"mean": m, "low": m - half, "high": m + half, "n": n}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 values or no spread."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float("nan")


def displacement_report(
    *,
    run_dir: str | None = None,
    model: str | None = None,
    start: str | None = None,
    data: list[str] | None = None,
    pairs: int = 64,
    controls: int = 16,
    top: int = 10,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """The numbers ``logitsam displacement`` prints (module docstring). With ``run_dir`` the data, starting
    model and lengths come from its config.yaml (``model``/``start``/``data`` override them); without it,
    ``data`` and ``start`` (or ``model``) are required and only the CHES screen runs."""
    max_length, max_prompt, fmt, eval_fraction, data_seed = 512, 256, "auto", 0.0, 0
    if run_dir is not None:
        cfg = config_mod.load(os.path.join(run_dir, "config.yaml"))
        data = data or list(cfg.data.train_files)
        start = start or cfg.model.name_or_path
        max_length, max_prompt, fmt = cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.format
        eval_fraction, data_seed = (0.0 if cfg.data.eval_files else cfg.data.eval_fraction), cfg.data.seed
        model = model or trained_model_of(run_dir)
    else:
        start = start or model
        model = None if start == model else model
    if not data or not start:
        raise ConfigError("give RUN_DIR, or --data and --model (the model the pairs would be trained from)")
    mcfg = ModelConfig(name_or_path=start, dtype="float32")
    tok = load_tokenizer(mcfg)
    examples, _ = split_eval(load_examples(data, fmt), [], eval_fraction, data_seed)
    rows = tokenize_examples(tok, examples[: max(pairs, 1) * 2], max_length, max_prompt)[0][:pairs]
    if not rows:
        raise ConfigError(f"{', '.join(data)}: no usable preference pairs after tokenization")
    pad = tok.pad_token_id
    base = load_model(mcfg, vocab_size=len(tok)).to(device)
    ches = ches_scores(base, rows, pad)
    out: dict[str, Any] = {"start": start, "trained": model, "data": data, "pairs": len(rows), "ches": ches}
    order = sorted(range(len(rows)), key=lambda i: -ches["ches"][i])
    if model is None:
        out["most_likely_to_displace"] = [{"pair": i, "ches": ches["ches"][i]} for i in order[:top]]
        return out
    trained = load_model(ModelConfig(name_or_path=model, dtype="float32"), vocab_size=len(tok)).to(device)
    s0, s1 = response_stats(base, rows, pad), response_stats(trained, rows, pad)
    d = {
        side: [b[i] - a[i] for a, b in zip(s0["logp"], s1["logp"], strict=True)]
        for i, side in enumerate(("plus", "minus"))
    }
    out["dplus"], out["dminus"] = _mean_ci(d["plus"]), _mean_ci(d["minus"])
    out["margin"] = _mean_ci([p - m for p, m in zip(d["plus"], d["minus"], strict=True)])
    out["share_chosen_fell"] = sum(x < 0 for x in d["plus"]) / len(rows)
    out["dplus_regions"] = {
        r.split("_")[1]: _mean_ci([b[0] - a[0] for a, b in zip(s0[r], s1[r], strict=True)]) for r in REGIONS
    }
    out["spearman_ches_dplus"] = spearman(ches["ches"], d["plus"])
    # control text and KL: both models' samples of the first `controls` prompts
    n_tok = sorted(len(r["chosen_ids"]) for r in rows)[len(rows) // 2]
    # message-list prompts: the last message, under the chat template (as training saw them)
    chat = any(not isinstance(ex.prompt, str) for ex in examples[:controls])
    prompts = [ex.prompt if isinstance(ex.prompt, str) else ex.prompt[-1]["content"] for ex in examples[:controls]]
    dec = DecodeSettings(max_new_tokens=max(1, n_tok), temperature=1.0)
    _, ids0 = generate(base, tok, prompts, dec, seed=seed, chat=chat, desc="control text", return_ids=True)
    _, ids1 = generate(trained, tok, prompts, dec, seed=seed, chat=chat, desc="trained samples", return_ids=True)
    drift = [-x for x in sequence_kl_values(base, trained, ids0, pad)]  # log π(y) − log π₀(y), y ~ π₀
    out["control_drift"] = _mean_ci(drift)
    out["kl_forward"] = -out["control_drift"]["mean"]
    out["kl_reverse"] = sum(sequence_kl_values(trained, base, ids1, pad)) / max(1, len(ids1))
    out["most_likely_to_displace"] = [{"pair": i, "ches": ches["ches"][i], "dplus": d["plus"][i]} for i in order[:top]]
    return out


def reading(res: dict[str, Any]) -> list[str]:
    """What the numbers say, from their intervals: the chosen response's change in the absolute sense
    (the paper's and Razin et al.'s displacement: its probability fell), then against the control text's
    drift (the policy's general movement, ≈ −KL(π₀‖π)), whose share of the fall only matched-KL
    comparisons remove."""
    dp, cd = res["dplus"], res["control_drift"]
    if dp["high"] < 0:
        out = ["displacement: the chosen response fell on the pairs trained on (Δ+ < 0, its interval below 0)"]
    elif dp["low"] > 0:
        return ["no displacement: the chosen response rose on the pairs trained on (Δ+ > 0, its interval above 0)"]
    else:
        return ["no displacement shown: Δ+'s interval includes 0"]
    gap = dp["mean"] - cd["mean"]
    if dp["high"] < cd["low"]:
        out.append(f"it fell more than control text (Δ+ − control drift {gap:+.2f}): displacement beyond the drift")
    elif dp["low"] > cd["high"]:
        out.append(
            f"it fell less than control text (Δ+ − control drift {gap:+.2f}): part of the fall is the policy's "
            "general drift (≈ −KL); compare runs at matched KL, not at matched steps"
        )
    else:
        out.append(
            f"it fell about as much as control text (Δ+ − control drift {gap:+.2f}): the fall may be drift alone"
        )
    return out


def format_report(res: dict[str, Any]) -> str:
    """The report as text lines (what the command prints)."""

    def ci(e: dict[str, float]) -> str:
        return f"{e['mean']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]" if e["low"] == e["low"] else f"{e['mean']:+.2f}"

    lines = [f"start: {res['start']}   trained: {res['trained'] or '(none: CHES screen only)'}   pairs: {res['pairs']}"]
    if res["trained"]:
        lines += [
            f"chosen Δ+ {ci(res['dplus'])} nats per response (fell on {100 * res['share_chosen_fell']:.0f}% of pairs); "
            f"rejected Δ− {ci(res['dminus'])}; margin {ci(res['margin'])}",
            "  where Δ+ sits: " + ", ".join(f"{k} {ci(v)}" for k, v in res["dplus_regions"].items()),
            f"control text drift {ci(res['control_drift'])} (= −KL(π₀‖π) {res['kl_forward']:.2f}); "
            f"KL(π‖π₀) {res['kl_reverse']:.2f}",
            *(f"  {line}" for line in reading(res)),
            f"CHES vs Δ+ (Spearman): {res['spearman_ches_dplus']:+.2f} (negative: high-CHES pairs fall most)",
        ]
    lines.append("pairs most likely to displace (highest CHES under the starting model):")
    for r in res["most_likely_to_displace"]:
        extra = f"  Δ+ {r['dplus']:+.2f}" if "dplus" in r else ""
        lines.append(f"  pair {r['pair']:5d}  CHES {r['ches']:.4g}{extra}")
    return "\n".join(lines)


def write_json(res: dict[str, Any], path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)
