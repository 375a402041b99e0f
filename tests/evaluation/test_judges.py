"""LLMJudge against local HTTP servers: verdict parsing, failures, redirects, odd bodies, deadlines."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from logitsam.evaluation.judges import JudgeError, LLMJudge


def reply(handler, data: bytes, status=200, headers=()):
    handler.send_response(status)
    for k, v in headers:
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def verdict(text):
    return json.dumps({"choices": [{"message": {"content": text}}]}).encode()


def fair(handler, body):
    """'More helpful: X' for whichever response contains 'good'."""
    text = body["messages"][0]["content"]
    a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
    reply(handler, verdict(f"Comparison: one is better.\nMore helpful: {'A' if 'good' in a else 'B'}"))


class Server:
    """A judge endpoint on 127.0.0.1; ``script`` answers request i (falls back to the last entry)."""

    def __init__(self, *script):
        self.script, self.seen = list(script) or [fair], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append((self.path, self.headers.get("Authorization"), body))
                outer.script[min(len(outer.seen), len(outer.script)) - 1](self, body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # never wait for a handler still trickling to a client that left
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def make(*script):
        servers.append(Server(*script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def judge(url, **kw):
    return LLMJudge(url + "/v1", "m", "secret", task="dialogue", **{"timeout": 5, "retries": 0, "backoff": 0.01, **kw})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Comparison: x\nMore helpful: A", "A"),
        ("**More helpful:** A", "A"),
        ("**More helpful**: B", "B"),
        ("More helpful: a", "A"),
        ("more helpful: b.", "B"),
        ("MORE HELPFUL: B", "B"),
        ("Comparison: B is kinder. More helpful: B", "B"),
        ('More helpful: "A"', "A"),
        ("More helpful: 'B'.", "B"),
        ("More helpful: **A**!", "A"),
        ("More helpful: Response B", "B"),
        ("Preferred: A", "A"),
        ("Comparison: ...\nPreferred: `b`", "B"),
        ("More helpful: A\nwait, More helpful: B", "B"),  # the last verdict
        ("More helpful: C", None),
        ("More helpful: Both", None),
        ("More helpful: a response that is kind", None),  # lowercase 'a' is an article here
        ("Response A is more helpful", None),
        ("", None),
        (None, None),
    ],
)
def test_parse(answer, expected):
    assert LLMJudge.parse(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        'More helpful: "A" or "B"',  # the format line echoed without its brackets
        "Comparison: x\nMore helpful: A or B",
        "Preferred: A/B",
        "More helpful: A, B",
        "More helpful: B\nYour response should use the format: More helpful: A or B",  # the last verdict line rules
    ],
)
def test_only_the_format_asked_is_a_verdict(answer):
    """Before: every one of these was read as a vote (for the first letter): ties in both orders, 0 failures."""
    assert LLMJudge.parse(answer) is None


def test_an_echoing_judge_fails_every_pair_instead_of_tying(serve):
    s = serve(lambda h, body: reply(h, verdict('Comparison: both fine.\nMore helpful: "A" or "B"')))
    j = judge(s.url, max_failure_rate=1.0)
    out = j.compare(["q1", "q2"], ["good", "good"], ["bad", "bad"])
    assert all(math.isnan(v) for v in out) and (j.last.pairs, j.last.failures) == (2, 2)
    with pytest.raises(JudgeError, match="could not be parsed for 2 of 2 pairs"):
        judge(s.url).compare(["q1", "q2"], ["good", "good"], ["bad", "bad"])


def test_evaluate_reports_failures_and_ties_and_warns_when_they_are_most_pairs(serve, tmp_path, monkeypatch, capsys):
    """A judge that always answers "A" (position bias) ties every pair: report.md and results.json say so."""
    from logitsam.evaluation import evaluate as E

    s = serve(lambda h, body: reply(h, verdict("More helpful: A")))
    prompts = [f"q{i}" for i in range(4)]
    samples = {"m": ["good"] * 4}
    monkeypatch.setattr(E, "_load", lambda name, st: (name, None))
    monkeypatch.setattr(E, "_sample", lambda m, tok, p, st, name: (samples[m], [([1], [1])] * len(p)))
    out = tmp_path / "ev"
    res = E.evaluate_models(["m"], prompts, str(out), chosen=["bad"] * 4, judge=judge(s.url))
    row = json.loads((out / "results.json").read_text())["models"]["m"]
    assert (row["failures"], row["ties"], row["identical"]) == (0, 4, 0)
    assert row["warning"] == "m: the judge failed on 0 and tied on 4 of 4 pairs; its win rate rests on 0 decided pairs"
    assert res["warnings"] == [row["warning"]]
    report = Path(E.write_eval_report(str(out), res, "llm")).read_text()
    assert f"**Warning:** {row['warning']}." in report
    assert "| judge failures | ties |" in report and "| m | 50.0 [50.0, 50.0] | 0 | 4 |" in report


def test_the_command_line_prints_the_warning(tmp_path, monkeypatch, capsys):
    """Samples identical to the baseline's tie under any judge: said on stderr, naming the identical ones."""
    from logitsam import cli
    from logitsam.evaluation import evaluate as E

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "same text"}) + "\n" for i in range(3)))
    monkeypatch.setattr(E, "_load", lambda name, st: (name, None))
    monkeypatch.setattr(E, "_sample", lambda m, tok, p, st, name: (["same text"] * len(p), [([1], [1])] * len(p)))
    argv = [
        "evaluate",
        "--model",
        "tiny-random",
        "--prompts",
        str(data),
        "--judge",
        "vader",
        "--out",
        str(tmp_path / "ev"),
    ]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "WARNING: tiny-random: the judge failed on 0 and tied on 3 of 3 pairs (3 of the ties: identical" in err


def test_unparsed_verdicts_are_failures_not_ties(serve):
    def picky(handler, body):  # cannot decide about q3 and q7
        text = body["messages"][0]["content"]
        if "Query: q3\n" in text or "Query: q7\n" in text:
            reply(handler, verdict("More helpful: C"))
        else:
            fair(handler, body)

    s = serve(picky)
    prompts = [f"q{i}" for i in range(10)]
    good = ["good"] * 10
    j = judge(s.url, max_failure_rate=0.2)
    out = j.compare(prompts, good, ["bad"] * 10)
    assert [i for i, v in enumerate(out) if math.isnan(v)] == [3, 7]
    assert [v for v in out if not math.isnan(v)] == [1.0] * 8
    assert (j.last.pairs, j.last.failures, j.last.failed) == (10, 2, [3, 7])
    assert j.last.examples == ["More helpful: C"] * 2
    with pytest.raises(JudgeError, match=r"could not be parsed for 2 of 10 pairs \(20% > max_failure_rate 10%\)"):
        judge(s.url).compare(prompts, good, ["bad"] * 10)  # default threshold: 10%


def test_one_parsed_order_is_not_a_win(serve):
    s = serve(fair, lambda h, body: reply(h, verdict("I cannot decide.")))
    j = judge(s.url, max_failure_rate=1.0)
    (v,) = j.compare(["q"], ["good"], ["bad"])
    assert math.isnan(v) and j.last.failures == 1 and len(s.seen) == 2
    s2 = serve(lambda h, body: reply(h, verdict("")))  # first order unparsed: the second is not asked
    with pytest.raises(JudgeError, match="1 of 1 pairs"):
        judge(s2.url).compare(["q"], ["good"], ["bad"])
    assert len(s2.seen) == 1


def test_cross_origin_redirect_never_gets_the_key(serve):
    other = serve()

    def to_other(status):
        return lambda h, body: reply(h, b"", status, [("Location", other.url + "/v1/chat/completions")])

    s = serve(to_other(307))
    assert judge(s.url).compare(["q"], ["good"], ["bad"]) == [1.0]
    assert [auth for _, auth, _ in s.seen] == ["Bearer secret"] * 2
    assert [auth for _, auth, _ in other.seen] == [None, None]  # followed, without Authorization
    s = serve(to_other(302))  # would turn the POST into a GET: refused, not retried
    with pytest.raises(JudgeError, match=r"302 redirect .* not followed"):
        judge(s.url, retries=2).compare(["q"], ["good"], ["bad"])
    assert len(s.seen) == 1 and len(other.seen) == 2


def test_same_origin_redirect_keeps_the_key(serve):
    def moved(h, body):
        if h.path == "/v1/chat/completions":
            reply(h, b"", 308, [("Location", "/v2/chat/completions")])
        else:
            fair(h, body)

    s = serve(moved)
    assert judge(s.url).compare(["q"], ["good"], ["bad"]) == [1.0]
    assert [(p, auth) for p, auth, _ in s.seen][:2] == [
        ("/v1/chat/completions", "Bearer secret"),
        ("/v2/chat/completions", "Bearer secret"),
    ]


def drop(handler, body):
    handler.close_connection = True
    handler.connection.shutdown(2)


def short_body(handler):
    """Promises 100 bytes, sends 2, hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b"{}")
    handler.close_connection = True


ODD = {
    "invalid json": lambda h, b: reply(h, b"{not json"),
    "not utf-8": lambda h, b: reply(h, b'{"choices": "\xff\xfe"}'),
    "wrong shape": lambda h, b: reply(h, b'{"choices": []}'),
    "html": lambda h, b: reply(h, b"<html>busy</html>"),
    "dropped": drop,
    "short body": lambda h, b: short_body(h),
    "500": lambda h, b: reply(h, b"oops", 500),
    "429": lambda h, b: reply(h, b"slow down", 429),
}


@pytest.mark.parametrize("odd", sorted(ODD))
def test_odd_answers_are_retried_then_judge_error(serve, odd):
    s = serve(ODD[odd], ODD[odd], fair)  # two bad answers, then a good one
    assert judge(s.url, retries=2).compare(["q"], ["good"], ["bad"]) == [1.0]
    s = serve(ODD[odd])
    with pytest.raises(JudgeError, match="failed after 3 tries"):
        judge(s.url, retries=2).compare(["q"], ["good"], ["bad"])
    assert len(s.seen) == 3


def test_null_content_is_retried_then_a_failed_verdict(serve):
    null = lambda h, b: reply(h, json.dumps({"choices": [{"message": {"content": None}}]}).encode())  # noqa: E731
    s = serve(null, fair)
    assert judge(s.url, retries=1).compare(["q"], ["good"], ["bad"]) == [1.0]
    s = serve(null)
    with pytest.raises(JudgeError, match="could not be parsed for 1 of 1 pairs"):
        judge(s.url, retries=1).compare(["q"], ["good"], ["bad"])
    assert len(s.seen) == 2


def test_client_errors_are_not_retried(serve):
    s = serve(lambda h, b: reply(h, b'{"error": "bad key"}', 401))
    with pytest.raises(JudgeError, match=r"failed after 1 tries: HTTPStatusError: HTTP 401"):
        judge(s.url, retries=3).compare(["q"], ["good"], ["bad"])
    assert len(s.seen) == 1


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_timeout_bounds_the_whole_request(serve, phase):
    """A server that sends a byte every 50 ms never trips a per-read timeout; the deadline stops it."""

    def trickle(h, body):
        data = verdict("More helpful: A")
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        sent, rest = (b"", head + data) if phase == "headers" else (head, data)
        h.wfile.write(sent)
        h.wfile.flush()
        try:
            for i in range(len(rest)):
                h.wfile.write(rest[i : i + 1])
                h.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up, as it should
            h.close_connection = True

    s = serve(trickle)
    j = judge(s.url, timeout=0.5, retries=1)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match="failed after 2 tries: TimeoutError"):
        j.compare(["q"], ["good"], ["bad"])
    assert time.monotonic() - t0 < 2.5  # two attempts of 0.5 s (+ backoff), not len(body) × 50 ms each


def test_bad_judge_settings():
    for kw, message in (
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"max_failure_rate": 1.5}, "max_failure_rate"),
    ):
        with pytest.raises(ValueError, match=message):
            LLMJudge("http://127.0.0.1:9/v1", **kw)
    with pytest.raises(ValueError, match="http:// or https://"):
        LLMJudge("ftp://127.0.0.1/v1")
