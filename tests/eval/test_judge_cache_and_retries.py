"""What the judge's verdict cache is keyed by, a test per field (endpoint, model, template,
text: any one different asks anew; all equal reuse the reply), and how many times a failing
request is retried, against a local server that fails N times (issue 44)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dpokit.eval.judges import ChatClient, JudgeError, JudgeSettings, LLMJudge


class Flaky(BaseHTTPRequestHandler):
    """Answers "Output (a)"; the first ``server.fail`` requests get ``server.code`` instead;
    ``server.delay`` seconds before the first reply (a slow endpoint). Records every request's
    path and body."""

    def do_POST(self):  # noqa: N802 (the http.server name)
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.seen.append((self.path, body))
            fail, s.fail = s.fail > 0, s.fail - (s.fail > 0)
            delay, s.delay = s.delay, 0.0
        time.sleep(delay)
        if fail:
            self.send_response(s.code)
            self.end_headers()
            self.wfile.write(json.dumps({"error": {"message": f"busy ({s.code})"}}).encode())
            return
        payload = {"choices": [{"message": {"role": "assistant", "content": s.reply}}]}
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(payload).encode())
        except BrokenPipeError:  # the client gave up waiting (the timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    httpd.lock, httpd.seen, httpd.fail, httpd.code = threading.Lock(), [], 0, 503
    httpd.delay, httpd.reply = 0.0, "Output (a)"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    httpd.root = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    thread.join()


def judge(server, cache, url="/v1", model="judge-a", template=None, waits=None, **options):
    settings = JudgeSettings(server.root + url, model, template=template, cache_dir=str(cache),
                             **options)
    sleep = waits.append if waits is not None else (lambda s: None)
    return LLMJudge(settings, client=ChatClient(settings, sleep=sleep))


ITEM = ("the question", "answer one", "answer two")


def template(tmp_path, name, question="Which is better?"):
    path = tmp_path / name
    path.write_text("{instruction}\n# Output (a)\n{output_1}\n# Output (b)\n{output_2}\n"
                    + question)
    return str(path)


def test_the_same_judge_template_and_text_reuse_the_cached_verdict(server, tmp_path):
    first = judge(server, tmp_path)
    assert first.compare([ITEM]) == [1.0] and first.requests == 1
    server.reply = "Output (b)"  # a reply that would differ, were it asked
    again = judge(server, tmp_path)  # a new judge (a resumed evaluation), same settings
    assert again.compare([ITEM, ITEM]) == [1.0, 1.0] and again.requests == 0
    assert len(server.seen) == 1


@pytest.mark.parametrize("field", ["endpoint", "model", "template", "template_text",
                                   "prompt", "first", "second", "order"])
def test_any_one_field_different_asks_anew(server, tmp_path, field):
    cache = tmp_path / "cache"
    base = template(tmp_path, "base.txt")
    settings = dict(url="/v1", model="judge-a", template=base)
    item = ITEM
    assert judge(server, cache, **settings).compare([item]) == [1.0]
    server.reply = "Output (b)"  # what the second ask answers: a cached reply would say (a)
    if field == "endpoint":
        settings["url"] = "/v2"
    elif field == "model":
        settings["model"] = "judge-b"
    elif field == "template":  # another file with another text
        settings["template"] = template(tmp_path, "other.txt", "Which one is more helpful?")
    elif field == "template_text":  # the same file, edited
        template(tmp_path, "base.txt", "Which one is more helpful?")
    elif field == "prompt":
        item = ("another question", *ITEM[1:])
    elif field == "first":
        item = (ITEM[0], "answer three", ITEM[2])
    elif field == "second":
        item = (*ITEM[:2], "answer three")
    elif field == "order":
        item = (ITEM[0], ITEM[2], ITEM[1])
    second = judge(server, cache, **settings)
    assert second.compare([item]) == [0.0] and second.requests == 1
    path, body = server.seen[-1]
    assert path == settings["url"] + "/chat/completions" and body["model"] == settings["model"]
    assert "more helpful" in body["messages"][0]["content"] if field.startswith("template") \
        else "Which is better?" in body["messages"][0]["content"]


def test_the_same_template_text_at_another_path_reuses_the_verdict(server, tmp_path):
    """The cache is keyed by what the judge is asked, not by where the template lives."""
    a, b = template(tmp_path, "a.txt"), template(tmp_path, "b.txt")
    assert judge(server, tmp_path / "c", template=a).compare([ITEM]) == [1.0]
    server.reply = "Output (b)"
    again = judge(server, tmp_path / "c", template=b)
    assert again.compare([ITEM]) == [1.0] and again.requests == 0


def test_scores_are_cached_apart_from_verdicts(server, tmp_path):
    server.reply = "7"
    scorer = LLMJudge(JudgeSettings(server.root + "/v1", "judge-a", cache_dir=str(tmp_path)),
                      kind="score", client=None)
    assert scorer.scores(["q"], ["answer one"]) == [7.0] and scorer.requests == 1
    server.reply = "Output (b)"
    assert judge(server, tmp_path).compare([("q", "answer one", "x")]) == [0.0]


@pytest.mark.parametrize("retries, fails", [(0, 0), (0, 1), (1, 1), (2, 2), (2, 3), (3, 2),
                                            (4, 4), (4, 5)])
def test_a_failing_request_is_tried_retries_plus_one_times(server, tmp_path, retries, fails):
    server.fail = fails
    waits = []
    j = judge(server, tmp_path, retries=retries, backoff_s=0.25, waits=waits)
    if fails <= retries:
        assert j("q", "a", "b") == 1.0
        assert len(server.seen) == fails + 1
        assert waits == [0.25 * 2**i for i in range(fails)]  # doubled each time
        assert j.requests == 1
    else:
        with pytest.raises(JudgeError, match=rf"unreachable after {retries + 1} tries: "
                                             r"HTTP 503 busy \(503\)"):
            j("q", "a", "b")
        assert len(server.seen) == retries + 1
        assert waits == [0.25 * 2**i for i in range(retries)]
        assert j.requests == 0 and j.cache.get(next(iter(j.cache.replies), "")) is None


@pytest.mark.parametrize("code, transient", [(429, True), (500, True), (502, True),
                                             (503, True), (400, False), (401, False),
                                             (404, False), (428, False), (430, False),
                                             (499, False)])
def test_429_and_5xx_are_retried_other_refusals_are_not(server, tmp_path, code, transient):
    server.fail, server.code = 1, code
    j = judge(server, tmp_path, retries=2)
    if transient:
        assert j("q", "a", "b") == 1.0 and len(server.seen) == 2
    else:
        with pytest.raises(JudgeError, match=rf"HTTP {code} busy \({code}\)") as err:
            j("q", "a", "b")
        assert "unreachable" not in str(err.value) and len(server.seen) == 1


def test_a_slow_reply_times_out_and_is_retried(server, tmp_path):
    server.delay = 1.0
    j = judge(server, tmp_path, retries=1, timeout_s=0.2)
    assert j("q", "a", "b") == 1.0 and len(server.seen) == 2


def test_the_request_asks_for_a_deterministic_short_reply(server, tmp_path):
    judge(server, tmp_path, model="judge-z", max_tokens=7)("q", "a", "b")
    [(path, body)] = server.seen
    assert body["model"] == "judge-z" and body["temperature"] == 0 and body["max_tokens"] == 7
    [message] = body["messages"]
    assert message["role"] == "user" and "# Output (a)\n\na\n" in message["content"]


# --- what tools/mutate.py found unpinned in judges.py ---------------------------------------


def test_the_documented_defaults():
    s = JudgeSettings("http://h/v1", "m")
    assert (s.concurrency, s.retries, s.backoff_s, s.timeout_s, s.max_tokens) == (
        4, 4, 1.0, 60.0, 16)
    assert s.key_env == "OPENAI_API_KEY" and s.template is None and s.cache_dir is None
    with pytest.raises(AttributeError):
        s.retries = 0  # settings are a frozen record


def test_llm_judge_passes_its_template_and_concurrency(server, tmp_path, monkeypatch):
    from dpokit.eval.judges import llm_judge

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    spec = f"openai:{server.root}/v1#m"
    assert llm_judge(spec).settings.concurrency == 4
    path = template(tmp_path, "t.txt")
    judge_ = llm_judge(spec, template=path, concurrency=2)
    assert judge_.settings.concurrency == 2 and str(judge_.template_path) == path


@pytest.mark.parametrize("spec", ["openai:ftp://h/v1#m", "openai:http://h/v1", "openai:http://h/v1#",
                                  "http://h/v1#m", "openai:#m"])
def test_a_spec_without_a_url_or_a_model_is_refused(spec):
    with pytest.raises(JudgeError, match="expected openai:URL#MODEL"):
        JudgeSettings.parse(spec)
    assert JudgeSettings.parse("openai:https://h/v1/#m").url == "https://h/v1"


@pytest.mark.parametrize("reply, verdict", [("Output (a)", 1.0), ("(b) is better", 0.0),
                                            ("a", 1.0), ("output b", 0.0), ("Tie", 0.5),
                                            ("tie, but (a)", 1.0), ("(a) and (b) tie", None),
                                            ("(a) (b)", None), ("nothing", None)])
def test_verdicts_are_read_from_the_reply(reply, verdict):
    from dpokit.eval.judges import parse_verdict

    assert parse_verdict(reply) == verdict


def test_unreadable_scores_are_counted(server, tmp_path):
    server.reply = "no number here"
    scorer = LLMJudge(JudgeSettings(server.root + "/v1", "m", cache_dir=str(tmp_path)), "score")
    assert all(s != s for s in scorer.scores(["q", "q2"], ["a", "b"]))  # NaN
    assert scorer.unreadable == 2


def test_the_cache_folder_is_made_with_its_parents(server, tmp_path):
    deep = tmp_path / "not" / "yet" / "there"
    judge(server, deep)("q", "a", "b")
    assert len(list(deep.glob("*.jsonl"))) == 1


def test_scores_refuse_prompts_and_completions_of_different_lengths(server, tmp_path):
    scorer = LLMJudge(JudgeSettings(server.root + "/v1", "m", cache_dir=str(tmp_path)), "score")
    with pytest.raises(ValueError):
        scorer.scores(["q"], ["a", "b"])
    assert server.seen == []
