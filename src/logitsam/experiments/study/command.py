"""`logitsam study` on the command line: options checked before any model loads, --plan, --report-only."""

from __future__ import annotations

import argparse
import os
from typing import Any

from logitsam.errors import ConfigError
from logitsam.experiments.study.confirm import confirmation_plan
from logitsam.experiments.study.plan import CONFIRM, GROUPS, StudySettings, quick_study
from logitsam.experiments.study.records import read_record, read_shared, record_path
from logitsam.experiments.study.runner import run_study
from logitsam.experiments.study.study_report import write_study_report
from logitsam.training.models import check_device


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
                f"\ninterrupted: finished runs are kept; `logitsam study --out {args.out}` with the same options "
                "resumes"
            )
            return 130
    print(f"report: {args.out}/report.md (plots and results.json beside it)")
    return 0
