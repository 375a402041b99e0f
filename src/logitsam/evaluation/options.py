"""Options of ``logitsam evaluate`` / ``logitsam generate`` (argparse only: the CLI builds its parser without torch)."""

from __future__ import annotations

import argparse

JUDGES = "vader | reward_model:PATH[@LABEL] | llm:BASE_URL | none"
JUDGE_TASKS = ("dialogue", "summarization")  # judges.PAIRWISE_PROMPTS (tests check they agree)


def add_arguments(p: argparse.ArgumentParser, judged: bool) -> None:
    """The options of ``evaluate`` (``judged``) or ``generate``."""
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL",
        help="a run directory, HF name or path (LoRA runs load on their base); repeat for several",
    )
    p.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help=".txt (one prompt per line), or JSONL/JSON rows with 'prompt' (and 'chosen'), or any "
        "preference data file logitsam trains on",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="samples/*.jsonl, results.json and report.md go here")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous evaluation in --out (refused without it)"
    )
    if judged:
        p.add_argument("--judge", default="vader", help=f"{JUDGES} (default: vader)")
        p.add_argument("--judge-model", default=None, help="the LLM judge's model name (llm:...)")
        p.add_argument("--judge-task", default="dialogue", choices=JUDGE_TASKS)
        p.add_argument(
            "--baseline",
            default="chosen",
            help="'chosen' (the data's chosen responses) or a model whose samples are the baseline",
        )
        p.add_argument(
            "--reference",
            default=None,
            help="the model KL is measured against (default: a --baseline model; none for 'chosen')",
        )
    p.add_argument("--limit", type=int, default=0, help="use the first N prompts (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
