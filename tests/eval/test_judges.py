"""LLM judges against a small OpenAI-compatible server started by the test: verdicts in both
orders, ties, retries with backoff, bounded concurrency, the resumable cache, the key, and
one-line errors for an unreachable or refusing endpoint."""

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import write_jsonl

from dpokit.cli import main
from dpokit.eval.judges import ChatClient, JudgeError, JudgeSettings, LLMJudge, llm_judge
from dpokit.eval.metrics import win_rate
from dpokit.eval.rewards import load_reward


class FakeJudge(BaseHTTPRequestHandler):
    """Prefers the output that says "good"; scores "good" 8, else 3; "???" gets a reply no
    parser reads. ``server.fail`` 503s come first, ``server.status`` refuses everything."""

    def do_POST(self):  # noqa: N802 (the http.server name)
        s = self.server
        with s.lock:
            s.in_flight += 1
            s.most = max(s.most, s.in_flight)
            s.requests += 1
            s.auth.append(self.headers.get("Authorization"))
            fail = s.fail > 0
            s.fail -= fail
        time.sleep(0.03)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        with s.lock:
            s.in_flight -= 1
        if s.status or fail:
            code = s.status or 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": f"refused ({code})"}}).encode())
            return
        if "# Output (a)" in text:
            a, b = text.split("# Output (a)")[1].split("# Output (b)")
            s.seen_first.append("good" in a)
            reply = ("???" if "???" in a + b else "Output (a)" if "good" in a and "good" not in b
                     else "Output (b)" if "good" in b and "good" not in a else "Tie")
        else:
            output = text.split("# Output")[1]
            reply = "???" if "???" in output else "Score: 8" if "good" in output else "3"
        payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(payload).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    httpd.lock = threading.Lock()
    httpd.in_flight = httpd.most = httpd.requests = httpd.fail = httpd.status = 0
    httpd.auth, httpd.seen_first = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.spec = f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1#fake-judge"
    yield httpd
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _judge(server, tmp_path, **options):
    settings = JudgeSettings.parse(server.spec, cache_dir=str(tmp_path / "cache"), **options)
    return LLMJudge(settings, client=ChatClient(settings, sleep=lambda s: None))


def test_win_rate_in_both_orders_with_ties_and_bounded_concurrency(server, tmp_path):
    """12 comparisons: 8 candidates say "good" (wins), 4 tie; each is shown first about half
    the time (the seeded order), and at most 3 requests are in flight."""
    judge = _judge(server, tmp_path, concurrency=3)
    prompts = [f"q{i}" for i in range(12)]
    candidate = [f"a good answer {i}" if i < 8 else f"an answer {i}" for i in range(12)]
    baseline = [f"an answer {i}" for i in range(12)]
    result = win_rate(judge, prompts, candidate, baseline, seed=0)
    assert (result.wins, result.ties, result.losses) == (8, 4, 0)
    assert result.rate == pytest.approx((8 + 2) / 12)
    assert 0 < sum(server.seen_first[:8]) < 8  # the candidate was shown first and second
    assert 2 <= server.most <= 3 and server.requests == 12 == judge.requests


def test_the_cache_resumes_without_asking_again(server, tmp_path):
    items = [("q", "good one", "plain"), ("q", "plain", "good one"), ("q", "x", "y")]
    first = _judge(server, tmp_path).compare(items)
    assert first == [1.0, 0.0, 0.5] and server.requests == 3
    again = _judge(server, tmp_path)
    assert again.compare(items) == first and again.requests == 0 and server.requests == 3
    other = tmp_path / "mine.txt"
    other.write_text("For {instruction}:\n# Output (a)\n{output_1}\n# Output (b)\n{output_2}\n"
                     "Which output is better?")
    changed = _judge(server, tmp_path, template=str(other))  # another template: asked anew
    changed.compare(items[:1])
    assert changed.requests == 1


def test_transient_failures_are_retried_with_backoff(server, tmp_path):
    server.fail = 2
    waits = []
    settings = JudgeSettings.parse(server.spec, cache_dir=str(tmp_path), backoff_s=0.5)
    judge = LLMJudge(settings, client=ChatClient(settings, sleep=waits.append))
    assert judge("q", "good", "bad") == 1.0
    assert waits == [0.5, 1.0] and server.requests == 3


def test_refusals_and_unreachable_endpoints_are_one_line_errors(server, tmp_path, monkeypatch):
    server.status = 401
    with pytest.raises(JudgeError, match=r"HTTP 401 refused \(401\)"):
        _judge(server, tmp_path)("q", "a", "b")
    assert server.requests == 1  # not retried: the request itself is wrong
    dead = f"openai:http://127.0.0.1:{_closed_port()}/v1#m"
    settings = JudgeSettings.parse(dead, cache_dir=str(tmp_path), retries=2)
    with pytest.raises(JudgeError, match="unreachable after 3 tries"):
        LLMJudge(settings, client=ChatClient(settings, sleep=lambda s: None))("q", "a", "b")
    with pytest.raises(JudgeError, match="expected openai:URL#MODEL"):
        JudgeSettings.parse("openai:localhost:8000")
    with pytest.raises(JudgeError, match="no such file"):
        llm_judge(server.spec, template=str(tmp_path / "absent.txt"))


def test_the_key_comes_from_the_environment(server, tmp_path, monkeypatch):
    _judge(server, tmp_path)("q", "good", "bad")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    _judge(server, tmp_path)("q2", "good", "bad")
    assert server.auth == [None, "Bearer sk-test"]


def test_scores_as_a_reward_and_unreadable_replies(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    reward = load_reward(server.spec)
    scores = reward(["q", "q", "q"], ["a good one", "meh", "???"])
    assert scores[:2] == [8.0, 3.0] and math.isnan(scores[2])
    judge = _judge(server, tmp_path)
    assert judge.compare([("q", "???", "good")]) == [0.5] and judge.unreadable == 1


def test_dpokit_eval_with_an_llm_judge_and_an_unreachable_one(server, tmp_path,
                                                              tiny_model_dir, capsys,
                                                              monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "hi"}, {"prompt": "the end"}])
    out = tmp_path / "eval.json"
    args = ["eval", str(tiny_model_dir), "--reference", str(tiny_model_dir), "--prompts",
            str(prompts), "--reward", "helpers:brevity_reward", "--num-samples", "2",
            "--max-new-tokens", "4"]
    assert main([*args, "--judge", server.spec, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["eval/gen/ties"] == 1.0  # the same model's samples: no "good" in either
    assert server.requests == 4 and "judge: 4 requests" in capsys.readouterr().out
    dead = f"openai:http://127.0.0.1:{_closed_port()}/v1#m"
    monkeypatch.setattr(time, "sleep", lambda s: None)  # (the backoff between the 5 tries)
    assert main([*args, "--judge", dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dpokit: error: judge endpoint") and (
        "unreachable" in err[0])
