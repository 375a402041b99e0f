"""Command line: parse, build a config, call the library. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserError


def _toy(args: argparse.Namespace) -> int:
    from .theory.toy import ToyConfig, run_toy

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


def _train(args: argparse.Namespace) -> int:
    from . import config as config_mod
    from .run import train

    cfg = config_mod.load(args.config) if args.config else config_mod.Config()
    config_mod.apply_overrides(cfg, args.overrides)
    result = train(cfg)
    metrics = result["metrics"]
    shown = {k: metrics[k] for k in sorted(metrics) if not k.startswith("_")}
    print(json.dumps(shown, indent=1, default=str))
    print(f"model, config.yaml and metrics.jsonl in {cfg.train.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logitsam", description="Preference optimization with logits-SAM.")
    sub = p.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="the paper's logit-space toy dynamics and theorem checks")
    toy.add_argument("--out", default="runs/toy")
    toy.add_argument("--dim", type=int, default=1000)
    toy.add_argument("--classes", type=int, default=3)
    toy.add_argument("--lr", type=float, default=-0.1, help="phase-2 learning rate (negative: y− objective)")
    toy.add_argument("--steps", type=int, default=30)
    toy.add_argument("--rho", type=float, default=1.0, help="|ρ| of the SAM runs")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--no-checks", action="store_true")
    toy.set_defaults(func=_toy)

    tr = sub.add_parser(
        "train",
        help="train a policy with a preference loss (and logits-SAM)",
        description="Options after the config are overrides: --section.key=value (e.g. --sam.rho=1e-4).",
    )
    tr.add_argument("--config", help="YAML recipe (configs/*.yaml)")
    tr.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not (r.startswith("--") and "." in r.split("=", 1)[0])]
    if bad or (rest and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    args.overrides = rest
    try:
        return args.func(args)
    except UserError as e:
        print(f"logitsam: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
