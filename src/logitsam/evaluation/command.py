"""``logitsam evaluate`` and ``logitsam generate``: arguments, every check before a model loads, then evaluate.py."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import AutoConfig

from logitsam.config.schema import ModelConfig
from logitsam.errors import ConfigError
from logitsam.evaluation.evaluate import (
    EvalSettings,
    evaluate_models,
    read_prompts,
    uses_chat_template,
    write_eval_report,
    written_files,
)
from logitsam.evaluation.generation import DecodeSettings
from logitsam.evaluation.judges import (
    JudgeError,
    LLMJudge,
    RewardModelJudge,
    ScoreJudge,
    reward_model_spec,
    vader_reward,
)
from logitsam.evaluation.options import JUDGES
from logitsam.models import check_device, check_model_source, load_tokenizer
from logitsam.training import manifest
from logitsam.training.modelcard import add_evaluation
from logitsam.training.rundir import RunLock


def check_chat_template(tokenizer: Any, model: str, why: str) -> None:
    """ConfigError naming ``model`` and ``why`` (the option or key that needs a template) when the tokenizer
    has none: transformers' own error names neither."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{why}: {model!r} has no chat template (its tokenizer_config.json / chat_template.jinja set none); "
            "give a chat model, or add the template to its tokenizer"
        )


VADER_NAME = "VADER sentiment of the response (a sentiment judge: it scores positivity, not helpfulness)"


def _judge(args: argparse.Namespace) -> tuple[Any, str]:
    """(judge or None, its name for the report); the judge is built here, so a bad spec fails first."""
    spec = args.judge if hasattr(args, "judge") else "none"
    kind, _, value = spec.partition(":")
    if kind == "none":
        return None, "none"
    if kind == "vader":
        return ScoreJudge(vader_reward()), VADER_NAME
    if kind == "reward_model" and value:
        path, label = reward_model_spec(value)  # PATH@LABEL: the label of a classifier to score
        check_model_source(path, "--judge reward_model:PATH")
        _check_reward_head(path)
        return RewardModelJudge(path, device=args.device, label=label), f"reward model `{value}`"
    if kind == "llm" and value:
        try:
            judge = LLMJudge(value, args.judge_model, task=args.judge_task, seed=args.seed)
        except ValueError as e:
            raise ConfigError(f"--judge: {e}") from None
        try:
            judge.check_reachable()
        except JudgeError as e:
            raise ConfigError(f"--judge: {e}; start the server or fix the URL (nothing was sampled)") from None
        return judge, f"LLM judge `{judge.model}` at {judge.base_url} ({args.judge_task})"
    raise ConfigError(f"--judge: one of {JUDGES}, got {spec!r}")


def _check_reward_head(path: str) -> None:
    """A reward model must have a trained score head: a causal LM loads into AutoModelForSequenceClassification
    with a freshly initialised one, and would judge at random without a word."""
    try:
        archs = AutoConfig.from_pretrained(path).architectures or []
    except (OSError, ValueError) as e:
        raise ConfigError(f"--judge reward_model:{path}: cannot read its config ({e})") from None
    if archs and not any(a.endswith(("ForSequenceClassification", "RewardModel")) for a in archs):
        raise ConfigError(
            f"--judge reward_model:{path}: a {', '.join(archs)}, not a reward model (a *ForSequenceClassification "
            "head); its score head would be random — give a trained reward model"
        )


def _claim_out(out: str, overwrite: bool, planned: list[str], prompts: str) -> None:
    """Make ``out`` ready for an evaluation writing ``planned`` (paths relative to it), under its lock.

    A previous evaluation (the files out's manifest lists) is refused, or with ``overwrite`` removed — only
    those files: the user's own (a prompt file in samples/, notes) stay. A file we would write over that
    we did not write is refused either way, and so is removing the prompt file being evaluated."""
    previous = manifest.existing(out, manifest.EVALUATION)
    if previous and not overwrite:
        raise ConfigError(f"--out: {out!r} holds a previous evaluation ({_names(previous)}); add --overwrite to "
                          "replace it, or choose another --out")  # fmt: skip
    if previous and os.path.realpath(prompts) in {os.path.realpath(os.path.join(out, p)) for p in previous}:
        raise ConfigError(f"--prompts: {prompts!r} was written by the previous evaluation in --out, which "
                          "--overwrite removes; copy it out of --out first")  # fmt: skip
    if previous:
        manifest.remove_recorded(out, manifest.EVALUATION)
    clash = [p for p in planned if os.path.lexists(os.path.join(out, p))]
    if clash:
        raise ConfigError(f"--out: {out!r} holds {_names(clash)}, not written by logitsam (yours, or an older "
                          "version's without a record of its files), which this evaluation would replace; move "
                          "them away or choose another --out")  # fmt: skip
    folders = sorted({os.path.dirname(p) for p in planned} - {""})
    made = [f for f in folders if not os.path.lexists(os.path.join(out, f))]
    manifest.record(out, files=planned, folders=made, name=manifest.EVALUATION)


def _names(paths: list[str]) -> str:
    return ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")


@contextmanager
def _locked(out: str) -> Iterator[None]:
    """``out`` held for this evaluation (the lock training takes on its output_dir): a second one is refused."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create {out!r}: {e.strerror or e}") from None
    lock = RunLock(out, key="--out")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def card_section(res: dict[str, Any], label: str, judge_name: str, prompts: str, report: str) -> str:
    """The evaluation section of a run directory's model card: the win rate with its interval, KL, lengths."""
    row, n = res["models"][label], len(res["prompts"])
    name = os.path.basename(os.path.normpath(res["baseline"]))
    base = "the data's chosen responses" if res["baseline"] == "chosen" else f"samples of `{name}`"
    w = row["win"]
    lines = [f"`logitsam evaluate` on {n} prompts of `{os.path.basename(prompts)}` (chat template: "
             f"{'on' if res['settings']['chat'] else 'off'}), judge: {judge_name}; baseline: {base}.", "",
             "| win rate % [95% CI] | ties | judge failures | KL | mean words (baseline) |",
             "|---|---|---|---|---|"]  # fmt: skip
    kl = f"{row['kl']:.3f}" if "kl" in row else "–"
    words = sum(row["words"]) / max(1, len(row["words"]))
    bw = res.get("baseline_words") or []
    lines.append(f"| {100 * w['mean']:.1f} [{100 * w['low']:.1f}, {100 * w['high']:.1f}] | {row.get('ties', '–')} | "
                 f"{row.get('failures', '–')} | {kl} | {words:.1f} ({sum(bw) / max(1, len(bw)):.1f}) |")  # fmt: skip
    return "\n".join(lines) + f"\n\nThe whole report: `{report}` where it was evaluated."


def _check_numbers(args: argparse.Namespace) -> None:
    checks = [
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "≥ 1"),
        ("--temperature", args.temperature, math.isfinite(args.temperature) and args.temperature >= 0, "≥ 0"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, "≥ 1"),
        ("--limit", args.limit, args.limit >= 0, "≥ 0"),
        ("--seed", args.seed, 0 <= args.seed < 2**32, "in [0, 2**32)"),
    ]
    for option, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{option}: must be {rule}, got {value!r}")


def run(args: argparse.Namespace) -> int:
    """Check everything, then sample (and judge); prints the report's path."""
    _check_numbers(args)
    check_device(args.device)
    prompts, chosen = read_prompts(args.prompts)
    if args.limit:
        prompts, chosen = prompts[: args.limit], chosen[: args.limit]
    for m in args.model:
        check_model_source(m, "--model")
    baseline = getattr(args, "baseline", "chosen")
    reference = getattr(args, "reference", None)
    for option, m in (("--baseline", baseline), ("--reference", reference)):
        if m not in (None, "chosen"):
            check_model_source(m, option)
    if args.chat is None:  # as training renders the prompts: the template for message lists, else as written
        args.chat = uses_chat_template(args.prompts)
    if args.chat:  # before anything is sampled or written
        for m in [*args.model, *([baseline] if baseline != "chosen" else [])]:
            check_chat_template(load_tokenizer(ModelConfig(name_or_path=m, dtype=args.dtype)), m, "--chat")
    judge, judge_name = _judge(args)
    if judge is not None and baseline == "chosen" and any(c is None for c in chosen):
        raise ConfigError(f"--baseline chosen: {args.prompts} has no 'chosen' response for every prompt")
    samples_only = args.command == "generate"
    planned = written_files(args.model, judged=judge is not None, baseline=baseline, samples_only=samples_only)
    with _locked(args.out):
        _claim_out(args.out, args.overwrite, planned, args.prompts)
        _evaluate(args, prompts, chosen, baseline, reference, judge, judge_name)
    return 0


def _evaluate(args: argparse.Namespace, prompts: list[str], chosen: list[str | None], baseline: str,
              reference: str | None, judge: Any, judge_name: str) -> None:  # fmt: skip
    greedy = args.temperature == 0  # recorded as given: temperature 0, do_sample false
    decode = DecodeSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, do_sample=not greedy
    )
    s = EvalSettings(decode, args.seed, args.batch_size, args.chat, args.device, args.dtype)
    samples_only = args.command == "generate"
    res = evaluate_models(
        args.model, prompts, args.out, chosen=chosen, baseline=baseline, judge=judge, reference=reference, settings=s,
        samples_only=samples_only,
    )  # fmt: skip
    if samples_only:
        print(f"samples in {args.out}/samples (chat template: {'on' if args.chat else 'off'})")
        return
    report = write_eval_report(args.out, res, judge_name)
    print(f"report: {report} (samples in {args.out}/samples)")
    if judge is not None:
        for label, row in res["models"].items():
            card = add_evaluation(row["model"], card_section(res, label, judge_name, args.prompts, report))
            if card:
                print(f"model card: {card} (evaluation section)")
    for warning in res.get("warnings", []):  # a judge that failed or tied on most pairs
        print(f"WARNING: {warning}", file=sys.stderr)
