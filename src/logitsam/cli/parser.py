"""The argument parser: every command's options and help."""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable
from typing import Any

import logitsam.cli.commands as commands


class _Once(argparse.Action):
    """An option that may be given once: a second --config would silently replace the first (the same key
    twice among the overrides is refused too)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); give it once")
        setattr(namespace, self.dest, values)


def _train_epilog() -> str:
    """The config keys and loss names (computed when help is shown: the loss registry loads torch)."""
    from logitsam.config.fields import describe_fields
    from logitsam.core.registry import LOSSES

    rows = describe_fields()
    key_w, type_w = max(len(r.key) for r in rows), max(len(r.type) for r in rows)
    default_w = min(14, max(len(r.default) for r in rows))
    lines = [
        "overrides: --section.key=value or --section.key value, after or instead of --config; a name or path is",
        "kept as typed (--train.output_dir='runs/my run #2'), other values are read as YAML (--sam.rho 1e-4,",
        "--data.train_files=[a.jsonl, b.jsonl], null; one value where a list is expected is a one-item list).",
        "Relative data and model paths in a config file are read against the file's directory,",
        "those on the command line against the current directory. config.yaml in output_dir holds the resolved run.",
        "",
        "config keys (section.key  type  default  meaning):",
    ]
    section = ""
    for r in rows:
        if r.key.split(".")[0] != section:
            section = r.key.split(".")[0]
            lines.append("")
        lines.append(f"  {r.key:{key_w}s}  {r.type:{type_w}s}  {r.default:{default_w}s}  {r.help}")
    lines += ["", f"losses (loss.name; `logitsam losses` lists their hyperparameters): {', '.join(sorted(LOSSES))}"]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed only when its help is shown."""

    def __init__(self, *args: Any, epilog_fn: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


def _config_command(sub: Any, name: str, help_: str, description: str) -> None:
    """A command driven by a YAML recipe and --section.key overrides (train, sft): the config keys in its help."""
    cmd = sub.add_parser(
        name,
        help=help_,
        usage=f"logitsam {name} [-h] [--config FILE] [--section.key=value | --section.key value ...]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog_fn=_train_epilog,
    )
    cmd.add_argument(
        "--config", metavar="FILE", action=_Once, help="YAML recipe (configs/*.yaml); without it every key's default"
    )
    cmd.set_defaults(func=commands.train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="logitsam", description="Preference optimization with logits-SAM.")
    p.add_argument("--version", action="version", version=f"logitsam {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    toy = sub.add_parser("toy", help="the paper's logit-space toy dynamics and theorem checks")
    toy.add_argument("--out", default="runs/toy")
    toy.add_argument("--dim", type=int, default=1000)
    toy.add_argument("--classes", type=int, default=3)
    toy.add_argument("--lr", type=float, default=-0.1, help="phase-2 learning rate (negative: y− objective)")
    toy.add_argument("--steps", type=int, default=30)
    toy.add_argument("--rho", type=float, default=1.0, help="|ρ| of the SAM runs")
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--no-checks", action="store_true")
    toy.set_defaults(func=commands.toy)

    _config_command(
        sub,
        "train",
        "train a policy with a preference loss (and logits-SAM)",
        "Train a policy with a preference loss and logits-SAM: a YAML recipe (configs/*.yaml) and/or command-line "
        "overrides of any config key listed below.",
    )
    _config_command(
        sub,
        "sft",
        "supervised fine-tuning on prompt/completion rows or the chosen responses of preference data",
        "Supervised fine-tuning, the step before preference training: the same config keys, data formats, run "
        "directory, resuming, LoRA and launchers as `logitsam train` (the loss and sam sections are not used). Rows "
        "with prompt and completion (or response), or preference data whose chosen responses are the targets. The "
        "saved model is ready for `logitsam train --model.name_or_path=OUTPUT_DIR`.",
    )

    sh = sub.add_parser("sharpness", help="Hessian traces (parameters and logits) of the preference loss")
    sh.add_argument("--model", required=True, help="checkpoint dir, HF name, or tiny-random")
    sh.add_argument("--data", required=True, help="preference data file")
    sh.add_argument("--ref", help="reference model (default: the checkpoint itself)")
    sh.add_argument("--loss", default="dpo")
    sh.add_argument("--beta", type=float, default=0.1)
    sh.add_argument("--probes", type=int, default=16,
                    help="Rademacher probes of the parameter trace (the cap with --target-se; "
                    "the logit trace is exact)")  # fmt: skip
    sh.add_argument("--target-se", type=float, default=None, metavar="FRACTION",
                    help="probe the parameter trace until its standard error is at most this fraction of |trace| "
                    "(e.g. 0.05)")  # fmt: skip
    sh.add_argument("--pairs", type=int, default=8, help="preference pairs in the batch")
    sh.add_argument("--max-length", type=int, default=256)
    sh.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", help="write the traces as JSON here")
    sh.set_defaults(func=commands.sharpness)

    dp = sub.add_parser(
        "displacement",
        help="likelihood displacement on a run's own trained pairs, drift apart, and CHES ranking of its pairs",
        description="For a finished or running training run: the chosen/rejected log-prob change on a sample of "
        "the pairs it trains on, beside the drift of control text (the starting model's own samples) and the KL "
        "to the start, where on each response the change sits, and the pairs ranked by CHES (Razin et al. 2024) "
        "— which also screens a dataset before training (--data and --model without RUN_DIR).",
    )
    dp.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a train.output_dir (config.yaml inside)")
    dp.add_argument("--model", help="the trained model (default: RUN_DIR's saved model or newest checkpoint)")
    dp.add_argument("--start", help="the starting model (default: RUN_DIR's model.name_or_path)")
    dp.add_argument("--data", action="append", help="preference data (default: RUN_DIR's data.train_files)")
    dp.add_argument("--pairs", type=int, default=64, help="pairs measured (the first ones of the data)")
    dp.add_argument("--controls", type=int, default=16, help="prompts sampled for control text and KL")
    dp.add_argument("--top", type=int, default=10, help="pairs listed by CHES")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--device", default="cpu")
    dp.add_argument("--out", help="write the numbers as JSON here")
    dp.set_defaults(func=commands.displacement)

    ex = sub.add_parser(
        "export",
        help="merge a LoRA run directory into a plain model directory (weights, tokenizer, model card)",
        description="Merge a LoRA run's adapters into their base and save the plain model, loadable by "
        "transformers alone, with the run's model card (library_name: transformers).",
    )
    ex.add_argument("run_dir", metavar="RUN_DIR", help="a LoRA run's train.output_dir")
    ex.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory for the merged model")
    ex.set_defaults(func=commands.export)

    ls = sub.add_parser("losses", help="the registered losses, their hyperparameters, defaults and valid ranges")
    ls.set_defaults(func=commands.losses)

    pl = sub.add_parser("plot", help="plot the metrics.jsonl of one or more run directories into a PNG")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a train.output_dir holding metrics.jsonl")
    pl.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    pl.add_argument("--labels", help="comma-separated legend labels, one per RUN_DIR (default: the dir names)")
    pl.set_defaults(func=commands.plot)

    from logitsam.evaluation.options import add_arguments  # argparse only: no torch

    for name, judged, text in (
        ("evaluate", True, "sample trained models on prompts; win rates against a baseline, KL, lengths"),
        ("generate", False, "sample models on prompts to JSONL (judge them elsewhere)"),
    ):
        ev = sub.add_parser(name, help=text, description=text)
        add_arguments(ev, judged)
        ev.set_defaults(func=commands.evaluate)
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("logitsam")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"
