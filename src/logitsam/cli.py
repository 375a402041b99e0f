"""Command line: parse, build a config, call the library. No logic lives here."""

from __future__ import annotations

import argparse
import copy
import errno
import importlib.metadata
import json
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from logitsam.errors import ConfigError, UserError, one_line


class _Once(argparse.Action):
    """An option that may be given once: a second --config would silently replace the first (the same key
    twice among the overrides is refused too)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice ({getattr(namespace, self.dest)} and {values}); give it once")
        setattr(namespace, self.dest, values)

def _out_dir(path: str, option: str) -> None:
    """Create ``path`` (a directory) and check a file can be written in it, before any work:
    ConfigError naming ``option`` otherwise (a file in the way, no permission, /proc, ...)."""
    from logitsam.training.rundir import check_output_dir

    check_output_dir(path, option)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"{option}: cannot write into {path!r}: {e.strerror or e}") from None


def _out_file(path: str, option: str) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"{option}: {path!r} is a directory, not a file")
    _out_dir(os.path.dirname(os.path.abspath(path)), option)


def _at_least(value: float, low: float, option: str) -> None:
    if not math.isfinite(value) or value < low:
        raise ConfigError(f"{option}: must be ≥ {low:g}, got {value!r}")


def _seed(value: int, option: str = "--seed") -> None:
    if not 0 <= value < 2**32:
        raise ConfigError(f"{option}: must be in [0, 2**32), got {value}")


def _toy(args: argparse.Namespace) -> int:
    from logitsam.theory.run import run_toy
    from logitsam.theory.toy import ToyConfig

    _at_least(args.dim, 1, "--dim")
    _at_least(args.classes, 2, "--classes")
    _at_least(args.steps, 1, "--steps")
    _seed(args.seed)
    for option, value in (("--lr", args.lr), ("--rho", args.rho)):
        if not math.isfinite(value):
            raise ConfigError(f"{option}: must be a finite number, got {value!r}")
    if args.rho <= 0:
        raise ConfigError(f"--rho: is |ρ| (the SAM runs use +ρ and −ρ) and must be > 0, got {args.rho!r}")
    _out_dir(args.out, "--out")
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


def _train(args: argparse.Namespace) -> int:
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


def _sharpness(args: argparse.Namespace) -> int:
    import torch

    from logitsam.config.schema import ModelConfig
    from logitsam.core.registry import get_loss, resolve_hparams
    from logitsam.data.batching import PreferenceCollator, tokenize_examples
    from logitsam.data.examples import load_examples
    from logitsam.diagnostics.sharpness import measure_sharpness
    from logitsam.training.models import check_model_source, load_model, load_tokenizer

    # everything checkable is checked before a model is loaded
    _at_least(args.probes, 1, "--probes")
    if args.target_se is not None and not (math.isfinite(args.target_se) and 0 < args.target_se < 1):
        raise ConfigError(f"--target-se: a fraction in (0, 1), got {args.target_se!r}")
    _at_least(args.pairs, 1, "--pairs")
    _at_least(args.max_length, 2, "--max-length")
    _seed(args.seed)
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
        _out_file(args.out, "--out")
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
        print(f"{k:18s} trace = {v.mean:.6g} ± {v.stderr:.3g} (Hutchinson, {v.probes} Rademacher probes)")
    if args.out:
        try:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)
        except OSError as e:
            raise ConfigError(f"--out: cannot write {args.out!r}: {e.strerror or e}") from None
        print(f"wrote {args.out}")
    return 0


def _losses(args: argparse.Namespace) -> int:
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
    return 0


def _plot(args: argparse.Namespace) -> int:
    from logitsam.plot import plot_runs  # the plotting module loads matplotlib: only for this command

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.run_dirs):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(args.run_dirs)} run directories")
    _out_file(args.out, "--out")
    print(f"wrote {plot_runs(args.run_dirs, args.out, labels)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from logitsam.experiments.squeeze.demo import run_demo

    _out_dir(args.out, "--out")
    print(f"report: {run_demo(args.out, quick=args.quick, device=args.device)} (the Fig. 1c figure beside it)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from logitsam.evaluation.command import run

    _out_dir(args.out, "--out")
    return run(args)


def _study(args: argparse.Namespace) -> int:
    from logitsam.experiments.study.command import study_command

    return study_command(args, _out_dir)


def _train_epilog() -> str:
    """The config keys and loss names (computed when help is shown: the loss registry loads torch)."""
    from logitsam.config.schema import describe_fields
    from logitsam.core.registry import LOSSES

    rows = describe_fields()
    key_w, type_w = max(len(r.key) for r in rows), max(len(r.type) for r in rows)
    default_w = min(14, max(len(r.default) for r in rows))
    lines = [
        "overrides: --section.key=value or --section.key value, after or instead of --config; values are read as",
        "YAML (--sam.rho 1e-4, --data.train_files=[a.jsonl, b.jsonl]; one value where a list is expected is a",
        "one-item list). Relative data and model paths in a config file are read against the file's directory,",
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
    toy.set_defaults(func=_toy)

    tr = sub.add_parser(
        "train",
        help="train a policy with a preference loss (and logits-SAM)",
        usage="logitsam train [-h] [--config FILE] [--section.key=value | --section.key value ...]",
        description="Train a policy with a preference loss and logits-SAM: a YAML recipe (configs/*.yaml) and/or "
        "command-line overrides of any config key listed below.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog_fn=_train_epilog,
    )
    tr.add_argument(
        "--config", metavar="FILE", action=_Once, help="YAML recipe (configs/*.yaml); without it every key's default"
    )
    tr.set_defaults(func=_train)

    sf = sub.add_parser(
        "sft",
        help="supervised fine-tuning on prompt/completion rows or the chosen responses of preference data",
        usage="logitsam sft [-h] [--config FILE] [--section.key=value | --section.key value ...]",
        description="Supervised fine-tuning, the step before preference training: the same config keys, data "
        "formats, run directory, resuming, LoRA and launchers as `logitsam train` (the loss and sam sections are "
        "not used). Rows with prompt and completion (or response), or preference data whose chosen responses are "
        "the targets. The saved model is ready for `logitsam train --model.name_or_path=OUTPUT_DIR`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog_fn=_train_epilog,
    )
    sf.add_argument("--config", metavar="FILE", action=_Once, help="YAML recipe; without it every key's default")
    sf.set_defaults(func=_train)

    sh = sub.add_parser("sharpness", help="Hessian traces (parameters and logits) of the preference loss")
    sh.add_argument("--model", required=True, help="checkpoint dir, HF name, or tiny-random")
    sh.add_argument("--data", required=True, help="preference data file")
    sh.add_argument("--ref", help="reference model (default: the checkpoint itself)")
    sh.add_argument("--loss", default="dpo")
    sh.add_argument("--beta", type=float, default=0.1)
    sh.add_argument("--probes", type=int, default=16, help="Rademacher probes (the cap with --target-se)")
    sh.add_argument("--target-se", type=float, default=None, metavar="FRACTION",
                    help="probe until the standard error is at most this fraction of |trace| (e.g. 0.05)")  # fmt: skip
    sh.add_argument("--pairs", type=int, default=8, help="preference pairs in the batch")
    sh.add_argument("--max-length", type=int, default=256)
    sh.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", help="write the traces as JSON here")
    sh.set_defaults(func=_sharpness)

    ls = sub.add_parser("losses", help="the registered losses, their hyperparameters, defaults and valid ranges")
    ls.set_defaults(func=_losses)

    pl = sub.add_parser("plot", help="plot the metrics.jsonl of one or more run directories into a PNG")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a train.output_dir holding metrics.jsonl")
    pl.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")
    pl.add_argument("--labels", help="comma-separated legend labels, one per RUN_DIR (default: the dir names)")
    pl.set_defaults(func=_plot)

    demo = sub.add_parser(
        "demo",
        help="a fast slice of the squeeze-regime study: DPO vs DPO + logits-SAM on SmolLM2-135M-Instruct, VADER judge",
        description="Default: the first 48 on-policy preference pairs of the squeeze study's main setting (shipped "
        "with the package; SmolLM2-135M-Instruct's samples judged by VADER sentiment), 3 epochs, plain DPO and DPO + "
        "logits-SAM (rho 1e-3), held-out and training chosen/rejected log-prob drift along training (the paper's "
        "Fig. 1c), win rate against the starting model and KL on 96 held-out prompts (about 6 min on 2 CPU cores). "
        "--quick runs the same pipeline on a tiny random model with a letters-fraction reward: a check that the "
        "pipeline works, not a result.",
    )
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="tiny random model, letters-fraction reward (not VADER), 16 pairs: a pipeline check in about a minute",
    )
    demo.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default: cpu)")
    demo.set_defaults(func=_demo)

    st = sub.add_parser(
        "study",
        help="the paper's claims on the demo's task with statistics: Table 1/3 and §4.3 analogues (hours on a CPU)",
        description="DPO, SLiC-HF and CPO with and without logits-SAM, a ρ sweep, remedies, full SAM and a "
        "smaller-step DPO control, 3 seeds each, win rates on 308 held-out prompts with crossed seed × prompt "
        "intervals, Hessian traces. Resumable: runs finished in --out are not run again; Ctrl-C keeps them.",
        epilog="groups, in the order they run: dpo (DPO ± logits-SAM ρ=0.1, Hessian traces), dpo-small-step (DPO at "
        "half the learning rate), slic-cpo, rho (DPO + logits-SAM at ρ 1e-3, 1e-2, 1, 1e-4), remedies (Gate-DPO, "
        "dpo_abs, spo_target), full-sam, confirm (DPO and DPO + logits-SAM at the sweep's best ρ on fresh seeds, "
        "once the sweep is finished)",
    )
    st.add_argument("--out", default="runs/study", metavar="DIR", help="the study directory (default: runs/study)")
    st.add_argument("--device", default="auto", help="auto (CUDA if visible), cpu or cuda")
    st.add_argument("--seeds", help="comma-separated training seeds (default 2,3,4; the demo tuned on 0)")
    st.add_argument(
        "--confirm-seeds", help="comma-separated fresh seeds re-running the sweep's best ρ against DPO (default 5,6,7)"
    )
    st.add_argument("--groups", help="comma-separated groups to run, in order (default: all, listed below)")
    st.add_argument("--plan", action="store_true", help="list the planned runs: done / todo / foreign; run nothing")
    st.add_argument("--report-only", action="store_true", help="write the report from the runs finished in --out")
    st.add_argument("--quick", action="store_true", help="tiny random model, letters reward: a pipeline check")
    st.set_defaults(func=_study)

    from logitsam.evaluation.options import add_arguments  # argparse only: no torch

    for name, judged, text in (
        ("evaluate", True, "sample trained models on prompts; win rates against a baseline, KL, lengths"),
        ("generate", False, "sample models on prompts to JSONL (judge them elsewhere)"),
    ):
        ev = sub.add_parser(name, help=text, description=text)
        add_arguments(ev, judged)
        ev.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("train", "sft"):  # their overrides are checked (and named) by apply_overrides
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest
    try:
        return args.func(args)
    except Exception as e:
        if _is_training_diverged(e):  # checked first: it may become a UserError subclass
            print(f"logitsam: training diverged: {one_line(e)}", file=sys.stderr)
            return 3
        if isinstance(e, UserError):
            print(f"logitsam: error: {one_line(e)}", file=sys.stderr)
            return 2
        storage = _storage_error(e)
        if storage is not None:
            print(f"logitsam: error: {storage}", file=sys.stderr)
            return 2
        raise


def _version() -> str:
    try:
        return importlib.metadata.version("logitsam")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"




def _storage_error(e: BaseException) -> str | None:
    """One line for a full disk, a quota, a read-only file system or a permission refused while writing
    (also when a library wrapped the OSError, e.g. safetensors' SafetensorError); None for anything else."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            where = f" writing {seen.filename!r}" if seen.filename else ""
            return (
                f"the disk refused a write{where}: {seen.strerror}. Checkpoints completed before it are kept (a "
                "partial one is skipped on resume); free space or remount, then resume with "
                "--train.resume_from_checkpoint=last"
            )
        if isinstance(seen, PermissionError) and seen.filename:  # e.g. a report into a read-only directory
            return f"cannot write {seen.filename!r}: {seen.strerror}; make it writable or choose another --out"
        if isinstance(seen, IsADirectoryError) and seen.filename:  # e.g. a folder named report.md
            target = getattr(seen, "filename2", None) or seen.filename
            return f"cannot write {target!r}: a directory is in its place; move it away or choose another --out"
        seen = seen.__cause__ or seen.__context__
    text = str(e).lower()
    if type(e).__name__ == "SafetensorError" and ("no space" in text or "read-only" in text):
        return f"the disk refused a write: {one_line(e, 200)}; free space or remount, then resume"
    return None


def _is_training_diverged(e: BaseException) -> bool:
    """Whether ``e`` is trainer.TrainingDiverged; the trainer module (torch, transformers) is only
    looked up when it is already loaded, which it is whenever it raised."""
    trainer = sys.modules.get("logitsam.training.trainer")
    diverged = getattr(trainer, "TrainingDiverged", None)
    return isinstance(diverged, type) and isinstance(e, diverged)


if __name__ == "__main__":
    raise SystemExit(main())
