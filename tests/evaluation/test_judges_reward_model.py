"""The reward-model judge (issue 31): one score from a head the checkpoint holds, long prompts trimmed from
the left so responses are judged, truncated comparisons counted in evaluate's results."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from logitsam.errors import UserError
from logitsam.evaluation import evaluate as E
from logitsam.evaluation.command import _judge
from logitsam.evaluation.judges import JudgeError, RewardModelJudge, reward_model_spec
from logitsam.models import tiny_tokenizer

MAX = 32  # tokens the saved tokenizer takes (bytes: the tiny tokenizer is byte-level)


def save(path, cls=LlamaForSequenceClassification, max_length=MAX, **cfg):
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    tok.model_max_length = max_length
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, pad_token_id=tok.pad_token_id, **cfg,
    )  # fmt: skip
    cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_long_prompts_lose_their_start_not_the_responses(tmp_path):
    """Before: truncated from the right, both texts were the prompt's first 32 bytes: a tie, 0 failures."""
    judge = RewardModelJudge(save(tmp_path, num_labels=1), device="cpu")
    prompt, a, b = "x" * 100, " a kind answer", " no"
    (p_a,) = judge.score([prompt], [a])
    (kept,) = judge.score([prompt[-(MAX - len(a)) :]], [a])  # what fits: the prompt's end and all of a
    assert p_a == pytest.approx(kept, abs=1e-6)
    assert judge.compare([prompt], [a], [b]) != [0.5]
    assert (judge.last.pairs, judge.last.truncated, judge.last.responses_cut) == (1, 1, 0)
    judge.compare(["short"], [a], [b])
    assert judge.last.truncated == 0


def test_a_classifier_is_scored_by_a_named_label_only(tmp_path):
    """Before: a 2-label sentiment model was accepted and scored by its first logit."""
    path = save(
        tmp_path, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1}
    )
    with pytest.raises(JudgeError, match=r"2-label classifier \(NEGATIVE, POSITIVE\).*reward_model:PATH@LABEL"):
        RewardModelJudge(path, device="cpu")
    with pytest.raises(JudgeError, match="no label 'JOY'"):
        RewardModelJudge(path, device="cpu", label="JOY")
    assert reward_model_spec(f"{path}@POSITIVE") == (path, "POSITIVE") and reward_model_spec(path) == (path, None)
    judge = _judge(argparse.Namespace(judge=f"reward_model:{path}@POSITIVE", device="cpu"))[0]
    enc = judge.tokenizer(["p one", "p another"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = judge.model(**enc).logits.log_softmax(-1)[:, 1]  # log P(POSITIVE): comparable across texts
    assert judge.score(["p", "p"], [" one", " another"]) == pytest.approx(want.tolist(), abs=1e-6)


def test_a_model_whose_score_head_would_be_random_is_refused(tmp_path):
    """Before: a causal LM whose config names no architectures passed the check and judged with a fresh head."""
    path = save(tmp_path, cls=LlamaForCausalLM)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("architectures", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"lacks score\.weight: its score head would be freshly initialised"):
        _judge(argparse.Namespace(judge=f"reward_model:{path}", device="cpu"))


def test_evaluate_counts_truncated_comparisons(tmp_path, monkeypatch):
    judge = RewardModelJudge(save(tmp_path / "rm", num_labels=1), device="cpu")
    prompts = ["y" * 60, "short", "z" * 80]
    monkeypatch.setattr(E, "_load", lambda name, s: (None, None))
    monkeypatch.setattr(E, "_sample", lambda m, tok, p, s, name: ([" fine"] * len(p), [([1], [1, 2])] * len(p)))
    res = E.evaluate_models(["m"], prompts, str(tmp_path / "ev"), chosen=[" ok!"] * 3, judge=judge)
    row = json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["m"]
    assert (row["truncated"], row.get("responses_cut", 0)) == (2, 0)
    report = Path(E.write_eval_report(str(tmp_path / "ev"), res, "rm")).read_text()
    assert "m: 2 of 3 comparisons longer than the reward model takes" in report
