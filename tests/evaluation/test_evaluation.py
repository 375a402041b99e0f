"""Evaluation: bootstrap intervals, judges (gold reward, reward model, LLM over a local HTTP server), KL."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
import torch

from judge_server import JudgeHandler
from logitsam.evaluation.generation import DecodeSettings, generate
from logitsam.evaluation.judges import GoldRewardJudge, JudgeError, LLMJudge, RewardModelJudge, vader_reward
from logitsam.evaluation.winrate import bootstrap, sequence_kl
from logitsam.models import tiny_model, tiny_tokenizer


def test_bootstrap_interval():
    iv = bootstrap([1.0] * 10)
    assert (iv.mean, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 10)
    iv = bootstrap([0.0, 1.0] * 50, seed=3)
    assert iv.mean == 0.5 and 0.38 < iv.low < 0.5 < iv.high < 0.62
    assert bootstrap([0.0, 1.0] * 50, seed=3) == iv  # seeded


def test_vader_judge_prefers_positive():
    judge = GoldRewardJudge(vader_reward())
    p = ["The movie was"] * 2
    assert judge.compare(p, ["wonderful, I loved it!", "okay"], ["awful and boring.", "okay"]) == [1.0, 0.5]
    assert bootstrap(judge.compare(p, ["great", "great"], ["bad", "bad"])).mean == 1.0


class Handler(BaseHTTPRequestHandler):
    mode = "fair"
    requests: ClassVar[list] = []
    fail_first = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append((body, self.headers.get("Authorization")))
        if Handler.fail_first > 0:
            Handler.fail_first -= 1
            self.send_response(500)
            self.end_headers()
            return
        if Handler.mode == "slow":
            time.sleep(0.5)
        text = body["messages"][0]["content"]
        a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        choice = "A" if Handler.mode == "biased" or "good" in a else "B"
        JudgeHandler.reply(self, {"choices": [{"message": {"content": f"Comparison: x.\nMore helpful: {choice}"}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.mode, Handler.requests, Handler.fail_first = "fair", [], 0
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_llm_judge_asks_both_orders(server):
    judge = LLMJudge(server, "judge-model", "secret", task="dialogue", timeout=5, retries=0)
    assert judge.compare(["q1", "q2"], ["a good answer", "bad"], ["bad", "a good answer"]) == [1.0, 0.0]
    assert len(Handler.requests) == 4
    body, auth = Handler.requests[0]
    assert body["model"] == "judge-model" and auth == "Bearer secret"
    Handler.mode = "biased"  # always says "A": position bias cancels to a tie
    assert judge.compare(["q"], ["good"], ["bad"]) == [0.5]


def test_llm_judge_retries_and_times_out(server):
    Handler.fail_first = 2
    judge = LLMJudge(server, "m", task="dialogue", timeout=5, retries=2, backoff=0.01)
    assert judge.compare(["q"], ["good"], ["bad"]) == [1.0]
    Handler.mode = "slow"
    judge = LLMJudge(server, "m", task="dialogue", timeout=0.1, retries=1, backoff=0.01)
    with pytest.raises(JudgeError, match="failed after 2 tries"):
        judge.compare(["q"], ["good"], ["bad"])


def test_llm_judge_config_from_env(monkeypatch):
    monkeypatch.setenv("LOGITSAM_JUDGE_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("LOGITSAM_JUDGE_MODEL", "x")
    j = LLMJudge(task="summarization")
    assert j.base_url == "http://127.0.0.1:9/v1" and j.model == "x"
    assert LLMJudge.parse("Comparison: ...\nPreferred: B") == "B" and LLMJudge.parse("no verdict") is None
    monkeypatch.delenv("LOGITSAM_JUDGE_BASE_URL")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="base URL"):
        LLMJudge()


def test_reward_model_judge(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = RewardModelJudge(str(tmp_path), device="cpu")
    scores = judge.score(["p", "p"], ["one answer", "another"])
    assert len(scores) == 2 and scores[0] != scores[1]
    expected = [1.0 if scores[0] > scores[1] else 0.0]
    assert judge.compare(["p"], ["one answer"], ["another"]) == expected


@pytest.mark.slow
def test_generation_is_seeded_and_kl_of_a_model_to_itself_is_zero():
    tok = tiny_tokenizer()
    tok.pad_token = tok.eos_token
    model = tiny_model(len(tok))
    dec = DecodeSettings(max_new_tokens=6)
    a, ids = generate(model, tok, ["Hello", "A longer prompt"], dec, seed=5, return_ids=True)
    b = generate(model, tok, ["Hello", "A longer prompt"], dec, seed=5)
    assert a == b and len(a) == 2
    assert ids[0][0] == tok("Hello")["input_ids"] and 1 <= len(ids[0][1]) <= 6
    assert sequence_kl(model, model, ids, tok.pad_token_id) == pytest.approx(0.0, abs=1e-6)


def test_shipped_pairs_are_used_when_their_key_matches(tmp_path, monkeypatch):
    """The demo's pairs ship with the package: used (and cached) when key and reward match, never sampled;
    --resample samples again and compares."""
    from experiments.study import pairs as P
    from logitsam.evaluation.generation import DecodeSettings

    prompts, dec = ["a", "b"], DecodeSettings(max_new_tokens=4, temperature=1.0)
    key = P.pairs_key("m", prompts, dec, 0)
    shipped = tmp_path / "demo_pairs.jsonl"
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 1.0, "score_rejected": 0.0}]
    shipped.write_text(
        json.dumps({"key": key, "reward": "vader", "made_with": "test"}) + "\n" + json.dumps(rows[0]) + "\n"
    )
    monkeypatch.setattr(P, "_shipped_file", lambda: shipped)
    sampled = []

    def fake_generate(model, tok, doubled, settings, **kw):
        sampled.append(len(doubled))
        return ["x", "y", "p", "q"]

    monkeypatch.setattr(P, "generate", fake_generate)
    reward = lambda prompt, text: {"x": 1.0, "y": 0.0, "p": 0.5, "q": 0.2}[text]  # noqa: E731
    got = P.make_pairs(None, None, prompts, reward, dec, model_id="m", cache=str(tmp_path / "c"), reward_name="vader")
    assert got == rows and sampled == []
    assert (tmp_path / "c" / f"pairs-{key}.jsonl").exists()
    other = P.make_pairs(
        None, None, prompts, reward, dec, model_id="m", cache=str(tmp_path / "d"), reward_name="letters"
    )
    assert sampled == [4] and len(other) == 2  # another reward: the shipped pairs do not apply
    again = P.make_pairs(
        None, None, prompts, reward, dec, model_id="m", cache=str(tmp_path / "e"), reward_name="vader", resample=True
    )
    assert sampled == [4, 4] and len(again) == 2


def test_the_shipped_pairs_are_the_default_demos():
    """make demo uses the shipped pairs: their key is the one the default settings compute."""
    from experiments.study.pairs import load_prompts, pairs_key, shipped_pairs
    from experiments.study.setup import DemoSettings
    from logitsam.evaluation.generation import DecodeSettings

    s = DemoSettings()
    key = pairs_key(
        s.model, load_prompts()[: s.max_prompts], DecodeSettings(max_new_tokens=s.new_tokens, temperature=1.0), 0
    )
    header, rows = shipped_pairs(key, s.reward)
    assert header["pairs"] == len(rows) == 280
    assert all(r["score_chosen"] > r["score_rejected"] for r in rows)
