"""Options of ``logitsam evaluate`` / ``logitsam generate`` (argparse only: the CLI builds its parser without torch)."""

from __future__ import annotations

import argparse

JUDGES = "vader | reward_model:PATH[@LABEL] | llm:BASE_URL | none"
JUDGE_HELP = (
    "vader: VADER sentiment of the response, a sentiment judge (right for sentiment tasks such as the demo's; "
    "it does not measure helpfulness); reward_model:PATH[@LABEL]: a sequence-classification reward model; "
    "llm:BASE_URL: an OpenAI-compatible LLM asked the DPO paper's pairwise question; none (default: vader)"
)
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
        p.add_argument("--judge", default="vader", metavar="JUDGE", help=JUDGE_HELP)
        p.add_argument("--judge-model", default=None, help="the LLM judge's model name (llm:...)")
        p.add_argument("--judge-task", default="dialogue", choices=JUDGE_TASKS)
        p.add_argument(
            "--baseline",
            default="chosen",
            help="'chosen' (the data's chosen responses) or a model whose samples are the baseline (default: chosen)",
        )
        p.add_argument(
            "--reference",
            default=None,
            help="the model KL is measured against (default: a --baseline model; none for 'chosen')",
        )
    p.add_argument("--limit", type=int, default=0, help="use the first N prompts (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy (recorded as 0) (default: 1.0)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap each prompt as a user turn of the model's chat template; default: as training does, on for "
        "prompts given as message lists (conversational data), off for text prompts and .txt files",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
