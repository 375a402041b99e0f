"""``python -m experiments.study.command``: the study on the command line, options checked before any model
loads, --plan, --report-only."""

from __future__ import annotations

import argparse
import os
from typing import Any

from experiments.study.confirm import confirmation_plan
from experiments.study.plan import CONFIRM, GROUPS, StudySettings, quick_study
from experiments.study.records import read_record, read_shared, record_path
from experiments.study.runner import run_study
from experiments.study.study_report import write_study_report
from logitsam.cli import guarded
from logitsam.cli.checks import out_dir
from logitsam.errors import ConfigError
from logitsam.models import check_device


def _items(value: str, option: str) -> list[str]:
    items = [x.strip() for x in value.split(",")]
    if not value.strip() or "" in items:
        raise ConfigError(f"--{option}: empty item in {value!r} (comma-separated, no empty entries)")
    if len(set(items)) != len(items):
        raise ConfigError(f"--{option}: repeated item in {value!r}")
    return items


def settings_from(args: argparse.Namespace) -> StudySettings:
    """The study the options ask for (ConfigError naming the option otherwise)."""
    if args.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: one of auto, cpu, cuda, got {args.device!r}")
    s = quick_study() if args.quick else StudySettings()
    s.device = args.device
    if args.seeds is not None:
        s.seeds = _seeds(args.seeds, "seeds")
    if getattr(args, "confirm_seeds", None) is not None:
        s.confirm_seeds = _seeds(args.confirm_seeds, "confirm-seeds")
    if args.groups is not None:
        s.groups = tuple(_items(args.groups, "groups"))
        known = (*GROUPS, CONFIRM)
        bad = [g for g in s.groups if g not in known]
        if bad:
            raise ConfigError(f"--groups: unknown {', '.join(map(repr, bad))}; known: {', '.join(known)}")
    both = sorted(set(s.seeds) & set(s.confirm_seeds))
    if both and CONFIRM in s.groups:
        raise ConfigError(
            f"--seeds / --confirm-seeds: seed {both[0]} is in both (seeds {','.join(map(str, s.seeds))}; confirmation "
            f"seeds {','.join(map(str, s.confirm_seeds))}): the confirmation needs fresh seeds; pass --confirm-seeds "
            "with others"
        )
    return s


def _seeds(value: str, option: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in _items(value, option))
    except ValueError:
        raise ConfigError(f"--{option}: comma-separated integers, got {value!r}") from None
    bad = [x for x in seeds if not 0 <= x < 2**32]
    if bad:
        raise ConfigError(f"--{option}: must be in [0, 2**32), got {bad[0]}")
    return seeds


def plan_lines(out: str, s: StudySettings) -> list[str]:
    """One line per planned run: done / todo / foreign (finished under other settings)."""
    key = s.key()
    shared_path = os.path.join(out, "shared.json")
    lines = []
    same = not os.path.exists(shared_path) or read_shared(out)["key"] == key
    if not same:
        lines.append(f"note: {out} holds a study made with other settings; running these options there is refused")
    confirm, why = [], ""
    if CONFIRM in s.groups and os.path.exists(shared_path) and same:
        confirm, why = confirmation_plan(out, s)
    for _, spec in s.plan() + confirm:
        path = record_path(out, spec.name)
        state = "todo"
        if os.path.exists(path):
            state = "done" if read_record(path).get("key") == key else "foreign"
        lines.append(f"{state:7s} {spec.name}")
    if CONFIRM in s.groups and not confirm:
        seeds = ",".join(map(str, s.confirm_seeds))
        lines.append(f"later   {CONFIRM}/dpo and dpo+lsam(best ρ) on seeds {seeds}: {why or 'after the ρ sweep'}")
    return lines


def study_command(args: argparse.Namespace, check_out_dir: Any) -> int:
    given = (args.seeds, getattr(args, "confirm_seeds", None), args.groups)
    if args.report_only and (any(x is not None for x in given) or args.quick):
        raise ConfigError(
            "--report-only reports what DIR holds: --seeds, --confirm-seeds, --groups and --quick do not apply"
        )
    s = settings_from(args)
    if args.plan:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ConfigError(f"--out: {args.out!r} is not a directory")
        try:
            for line in plan_lines(args.out, s):
                print(line)
        except BrokenPipeError:  # `--plan | head`
            pass
        return 0
    if args.report_only:
        read_shared(args.out)
        print(write_study_report(args.out))
    else:
        if args.device == "cpu":  # before CUDA is initialised: every model and the Trainer stay on the CPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        check_device(args.device)
        check_out_dir(args.out, "--out")
        try:
            run_study(args.out, s)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: finished runs are kept; `python -m experiments.study.command --out {args.out}` "
                "with the same options resumes"
            )
            return 130
    print(f"report: {args.out}/report.md (plots and results.json beside it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    st = argparse.ArgumentParser(
        prog="python -m experiments.study.command",
        description="The paper's claims on the demo's task with statistics (Table 1/3 and §4.3 analogues, hours on "
        "a CPU): DPO, SLiC-HF and CPO with and without logits-SAM, a ρ sweep, remedies, full SAM and a "
        "smaller-step DPO control, 3 seeds each, win rates on held-out prompts with crossed seed × prompt "
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
    return st


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: study_command(args, out_dir), "study")


if __name__ == "__main__":
    raise SystemExit(main())
