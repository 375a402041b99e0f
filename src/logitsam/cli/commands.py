"""The commands: check the options, build a config, call the library. Each command imports its modules
when it runs, so `logitsam --help` does not load torch."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
from typing import Any

from logitsam.cli.checks import at_least, check_seed, out_dir, out_file
from logitsam.errors import ConfigError, UserError


def toy(args: argparse.Namespace) -> int:
    from logitsam.theory.run import run_toy
    from logitsam.theory.toy import ToyConfig

    at_least(args.dim, 1, "--dim")
    at_least(args.classes, 2, "--classes")
    at_least(args.steps, 1, "--steps")
    check_seed(args.seed)
    for option, value in (("--lr", args.lr), ("--rho", args.rho)):
        if not math.isfinite(value):
            raise ConfigError(f"{option}: must be a finite number, got {value!r}")
    if args.rho <= 0:
        raise ConfigError(f"--rho: is |ρ| (the SAM runs use +ρ and −ρ) and must be > 0, got {args.rho!r}")
    out_dir(args.out, "--out")
    cfg = ToyConfig(
        dim=args.dim, classes=args.classes, neg_lr=args.lr, neg_steps=args.steps, rho=args.rho, seed=args.seed
    )
    s = run_toy(args.out, cfg, checks=not args.no_checks)
    print(
        f"p0_final  gd={s['gd']['p0_final']:.5f}  sam_pos={s['sam_pos']['p0_final']:.5f}  "
        f"sam_neg={s['sam_neg']['p0_final']:.5f}  (paper predicts sam_pos > gd > sam_neg: "
        f"{'holds' if s['prediction_holds'] else 'does NOT hold'})"
    )
    for name, res in s.get("checks", {}).items():
        shown = {k: v for k, v in res.items() if k not in ("lrs", "failures")}
        print(f"{name:7s} {'PASS' if res['passed'] else 'FAIL'}  {json.dumps(shown)}")
    print(f"wrote {args.out}/toy.png and {args.out}/summary.json")
    return 0 if all(r["passed"] for r in s.get("checks", {}).values()) else 1


def _check_copied_run(config_path: str | None, cfg: Any) -> None:
    """Resuming with a run's own config.yaml whose train.output_dir names another directory (the run
    folder was copied or moved) would resume and write *there*: refused, naming both."""
    if not config_path or not cfg.train.resume_from_checkpoint or os.path.basename(config_path) != "config.yaml":
        return
    here = os.path.dirname(os.path.abspath(config_path))
    if not os.path.exists(os.path.join(here, "metrics.jsonl")):
        return  # not a run's saved config
    if os.path.realpath(here) != os.path.realpath(cfg.train.output_dir):
        raise ConfigError(
            f"train.output_dir: {config_path} belongs to the run in {here!r} but names {cfg.train.output_dir!r} "
            f"(a copied or moved run?); resuming would continue there — add --train.output_dir={here} to resume "
            "this copy"
        )


def train(args: argparse.Namespace) -> int:
    from logitsam.config import schema as config_mod

    if args.command == "sft":
        from logitsam.training.sft import sft as run
    else:
        from logitsam.training.run import train as run

    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    config_mod.check_unique(args.overrides)
    from_file = copy.deepcopy(cfg.loss)
    config_mod.apply_overrides(cfg, args.overrides)
    _drop_foreign_loss_keys(cfg, from_file, args.overrides)
    _check_copied_run(args.config, cfg)
    try:
        result = run(cfg)
    except KeyboardInterrupt:
        out = cfg.train.output_dir
        saved = os.path.join(out, "config.yaml")
        from logitsam.training.checkpoints import list_checkpoints

        if os.path.exists(saved) and list_checkpoints(out):
            how = f"to resume: logitsam {args.command} --config {shlex.quote(saved)} "
            how += "--train.resume_from_checkpoint=last"
        elif os.path.exists(saved):  # started, but no checkpoint to resume from yet
            how = "no checkpoint was saved yet: start again with the same command and --train.overwrite_output_dir=true"
        else:
            how = "nothing was trained yet: run the same command again"
        print(f"\ninterrupted: checkpoints already saved in {out} are kept; {how}", file=sys.stderr)
        return 130
    metrics = result["metrics"]
    shown = {k: metrics[k] for k in sorted(metrics) if not k.startswith("_")}
    print(json.dumps(shown, indent=1, default=str))
    print(f"model, config.yaml and metrics.jsonl in {cfg.train.output_dir}")
    return 0


def _drop_foreign_loss_keys(cfg: Any, from_file: Any, overrides: list[str]) -> None:
    """``--loss.name=X`` switching the loss: the config file's β / params that loss X does not have are
    dropped with a note (they belonged to the file's loss); keys given on the command line stay, so a
    mismatch there is still an error."""
    from logitsam.config import schema as config_mod
    from logitsam.core.registry import LOSSES
    from logitsam.losses import import_loss_modules

    import_loss_modules(cfg.loss.imports)  # the losses they register may be the one switched to
    given = {dotted for _, dotted, _ in config_mod.split_overrides(overrides)}
    spec = LOSSES.get(cfg.loss.name)
    if "loss.name" not in given or spec is None or cfg.loss.name == from_file.name:
        return
    dropped = []
    if cfg.loss.beta is not None and "beta" not in spec.defaults and "loss.beta" not in given:
        cfg.loss.beta = None
        dropped.append("loss.beta")
    for key in list(cfg.loss.params):
        if key not in spec.defaults and key in from_file.params and not any(g.startswith("loss.params") for g in given):
            del cfg.loss.params[key]
            dropped.append(f"loss.params.{key}")
    if dropped:
        print(f"note: loss {cfg.loss.name!r} has no {', '.join(dropped)}: the config file's value(s) for loss "
              f"{from_file.name!r} dropped", file=sys.stderr)  # fmt: skip


def sharpness(args: argparse.Namespace) -> int:
    import torch

    from logitsam.config.schema import ModelConfig
    from logitsam.core.registry import get_loss, resolve_hparams
    from logitsam.data.batching import PreferenceCollator, tokenize_examples
    from logitsam.data.examples import load_examples
    from logitsam.diagnostics.sharpness import measure_sharpness
    from logitsam.models import check_model_source, load_model, load_tokenizer

    # everything checkable is checked before a model is loaded
    at_least(args.probes, 1, "--probes")
    if args.target_se is not None and not (math.isfinite(args.target_se) and 0 < args.target_se < 1):
        raise ConfigError(f"--target-se: a fraction in (0, 1), got {args.target_se!r}")
    at_least(args.pairs, 1, "--pairs")
    at_least(args.max_length, 2, "--max-length")
    check_seed(args.seed)
    try:
        spec = get_loss(args.loss)
    except ValueError as e:
        raise ConfigError(f"--loss: {e}") from None
    try:
        params = resolve_hparams(spec, {"beta": args.beta} if "beta" in spec.defaults else {})
    except ValueError as e:
        raise ConfigError(f"--beta: {e}") from None
    check_model_source(args.model, "--model")
    if args.ref:
        check_model_source(args.ref, "--ref")
    if args.out:
        out_file(args.out, "--out", tuple(x for x in (args.data, args.model, args.ref) if x and os.path.exists(x)))
    mcfg = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    tok = load_tokenizer(mcfg)
    examples, rows = load_examples([args.data]), []
    for start in range(0, len(examples), args.pairs):  # the first --pairs rows that survive tokenization
        if len(rows) >= args.pairs:
            break
        chunk = examples[start : start + args.pairs]
        rows += tokenize_examples(tok, chunk, args.max_length, args.max_length // 2)[0]
    rows = [{**r, "index": i} for i, r in enumerate(rows[: args.pairs])]
    if not rows:
        raise UserError(f"{args.data}: no usable preference pairs")
    batch = PreferenceCollator(tok.pad_token_id)(rows)
    model = load_model(mcfg, vocab_size=len(tok))
    ref = load_model(ModelConfig(name_or_path=args.ref, dtype=args.dtype), vocab_size=len(tok)) if args.ref else None
    torch.manual_seed(args.seed)
    res = measure_sharpness(
        model, batch, spec, params, ref_model=ref, probes=args.probes, seed=args.seed, target_rel_se=args.target_se
    )
    out = {k: v.to_dict() for k, v in res.items()}
    out.update(model=args.model, data=args.data, pairs=len(rows), loss=args.loss)
    for k, v in res.items():
        how = f"± {v.stderr:.3g} (Hutchinson, {v.probes} Rademacher probes)" if v.probes else "(exact)"
        print(f"{k:18s} trace = {v.mean:.6g} {how}")
    if args.out:
        try:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
        except OSError as e:
            raise ConfigError(f"--out: cannot write {args.out!r}: {e.strerror or e}") from None
        print(f"wrote {args.out}")
    return 0


def displacement(args: argparse.Namespace) -> int:
    from logitsam.evaluation.displacement import displacement_report, format_report, write_json
    from logitsam.models import check_device, check_model_source

    for v, name in ((args.pairs, "--pairs"), (args.controls, "--controls"), (args.top, "--top")):
        at_least(v, 1, name)
    check_seed(args.seed)
    check_device(args.device)
    if args.run_dir is not None and not os.path.isfile(os.path.join(args.run_dir, "config.yaml")):
        raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml in it)")
    for m, key in ((args.model, "--model"), (args.start, "--start")):
        if m:
            check_model_source(m, key)
    if args.out:
        out_file(args.out, "--out", tuple(x for x in (args.data or []) if os.path.exists(x)))
    res = displacement_report(
        run_dir=args.run_dir, model=args.model, start=args.start, data=args.data, pairs=args.pairs,
        controls=args.controls, top=args.top, seed=args.seed, device=args.device,
    )  # fmt: skip
    print(format_report(res))
    if args.out:
        write_json(res, args.out)
        print(f"wrote {args.out}")
    return 0


def losses(args: argparse.Namespace) -> int:
    from logitsam.core.registry import LOSSES, describe_losses

    rows = describe_losses()
    width = max(len(r.hparam) for r in rows)
    dw, rw = max(len(repr(r.default)) for r in rows), max(len(r.range) for r in rows)
    print("Set with --loss.name=NAME and --loss.params.KEY=VALUE (--loss.beta is short for params.beta).")
    for name in sorted(LOSSES):
        mine = [r for r in rows if r.loss == name]
        print(f"\n{name}: {mine[0].summary}")
        for r in mine:
            if r.hparam:
                print(f"  {r.hparam:{width}s}  default {r.default!r:{dw}s}  range {r.range:{rw}s}  {r.why}")
            else:
                print("  (no hyperparameters)")
    print(
        "\nweighted: the sum of weight × loss over loss.terms, e.g. MPO (TRL's loss_type list with loss_weights):\n"
        "  loss: {name: weighted, beta: 0.1, terms: [{name: dpo, weight: 0.8}, {name: bco_pair, weight: 0.2}, "
        "{name: sft, weight: 1.0}]}\n  loss.beta and loss.params go to every term with that hyperparameter."
    )
    return 0


def plot(args: argparse.Namespace) -> int:
    from logitsam.plot import plot_runs  # the plotting module loads matplotlib: only for this command

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.run_dirs):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(args.run_dirs)} run directories")
    read = [os.path.join(d, name) for d in args.run_dirs for name in ("metrics.jsonl", "config.yaml")]
    out_file(args.out, "--out", tuple(read))
    print(f"wrote {plot_runs(args.run_dirs, args.out, labels)}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from logitsam.evaluation.command import run

    out_dir(args.out, "--out")
    return run(args)


def export(args: argparse.Namespace) -> int:
    from logitsam.training.export import export_merged

    print(f"plain model (LoRA merged) in {export_merged(args.run_dir, args.out)}")
    return 0
