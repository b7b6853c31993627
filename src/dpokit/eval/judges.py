"""LLM judges behind an OpenAI-compatible chat endpoint (a vLLM or llama.cpp server, a hosted
model): pairwise verdicts for win rates, and 1-10 scores as a reward (``pairs sample``,
online DPO, ``eval --reward``).

A spec is ``openai:URL#MODEL``, e.g. ``openai:http://localhost:8000/v1#Qwen2.5-7B-Instruct``;
the key, when the endpoint wants one, comes from the environment variable ``OPENAI_API_KEY``
(``JudgeSettings.key_env``). Requests run at most ``concurrency`` at a time, are retried with
exponential backoff on connection errors, 429 and 5xx, and every verdict is appended to a
cache file keyed by (prompt, answers, judge, template), so an interrupted evaluation resumes
without asking twice. The prompt templates are files (``templates/``, AlpacaEval-style) that a
user can replace.

    >>> parse_verdict("Output (b)"), parse_verdict("tie"), parse_verdict("no idea")
    (0.0, 0.5, None)
    >>> JudgeSettings.parse("openai:http://localhost:8000/v1#judge").model
    'judge'
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.paths import cache_root

TEMPLATES = Path(__file__).parent / "templates"
PREFIX = "openai:"


class JudgeError(ValueError):
    """The endpoint cannot be reached or refuses the request (one line for the CLI)."""


@dataclass(frozen=True)
class JudgeSettings:
    """url: the API root (``.../v1``); model: the name the server serves; template: the prompt
    file (default: ``templates/pairwise.txt`` or ``score.txt``); concurrency: requests in
    flight at most; retries, backoff_s: tries after a transient failure, the first wait
    (doubled each time); cache_dir: where verdicts are kept (default: the dpokit cache)."""

    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    template: str | None = None
    concurrency: int = 4
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    max_tokens: int = 16
    cache_dir: str | None = None

    @classmethod
    def parse(cls, spec: str, **options: Any) -> JudgeSettings:
        """``openai:URL#MODEL`` -> settings; anything else is a one-line error."""
        url, sep, model = spec[len(PREFIX):].partition("#") if spec.startswith(PREFIX) else (
            "", "", "")
        if not (url.startswith(("http://", "https://")) and sep and model):
            raise JudgeError(f"judge {spec!r}: expected openai:URL#MODEL, e.g. "
                             f"openai:http://localhost:8000/v1#my-model")
        return cls(url.rstrip("/"), model, **options)


def parse_verdict(text: str) -> float | None:
    """1.0 when the reply names output (a), 0.0 for (b), 0.5 for a tie, None when unreadable."""
    words = text.strip().lower()
    a, b = "(a)" in words or words in ("a", "output a"), "(b)" in words or words in (
        "b", "output b")
    if a != b:
        return 1.0 if a else 0.0
    return 0.5 if "tie" in words and not (a or b) else None


def parse_score(text: str) -> float:
    """The first number of the reply (the 1-10 score), NaN when there is none (a row scored
    NaN is counted and skipped by the pair builders)."""
    found = re.search(r"-?\d+(?:\.\d+)?", text)
    return float(found.group()) if found else math.nan


def render_prompt(prompt: Any) -> str:
    """A prompt as text: a string as it is, chat messages as ``role: content`` lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)
    return str(prompt)


class ChatClient:
    """POSTs one user message to ``URL/chat/completions``; retries transient failures."""

    def __init__(self, settings: JudgeSettings, sleep: Callable[[float], None] | None = None):
        self.settings, self.sleep = settings, sleep or time.sleep

    def complete(self, text: str) -> str:
        s = self.settings
        body = json.dumps({"model": s.model, "temperature": 0, "max_tokens": s.max_tokens,
                           "messages": [{"role": "user", "content": text}]}).encode()
        headers = {"Content-Type": "application/json"}
        if os.environ.get(s.key_env):
            headers["Authorization"] = f"Bearer {os.environ[s.key_env]}"
        problem = ""
        for attempt in range(s.retries + 1):
            if attempt:
                self.sleep(s.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(f"{s.url}/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                    reply = json.loads(response.read())
                return str(reply["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as err:
                problem = f"HTTP {err.code} {_error_text(err)}"
                if err.code != 429 and err.code < 500:  # the request itself is wrong
                    raise JudgeError(f"judge {s.url} (model {s.model}): {problem}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                problem = str(getattr(err, "reason", err))
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise JudgeError(f"judge {s.url}: not an OpenAI chat reply ({err})") from None
        raise JudgeError(f"judge endpoint {s.url} unreachable after {s.retries + 1} tries: "
                         f"{problem}")


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", {}).get("message", err.reason)
    except (ValueError, AttributeError):
        return str(err.reason)


class VerdictCache:
    """Replies by key, kept in a JSONL file that grows one line per new reply."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.replies: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):  # a line a kill cut short
                    continue

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str) -> None:
        with self.lock:
            self.replies[key] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")


class LLMJudge:
    """Asks the endpoint with a template (``{instruction}``, ``{output_1}``, ``{output_2}``
    for pairwise; ``{instruction}``, ``{output}`` for scores), many requests at once, each
    reply cached. ``requests`` counts what it asked, ``unreadable`` the replies it could not
    read (a pairwise one counts as a tie)."""

    def __init__(self, settings: JudgeSettings, kind: str = "pairwise",
                 client: ChatClient | None = None):
        self.settings, self.kind = settings, kind
        path = Path(settings.template or TEMPLATES / f"{kind}.txt")
        if not path.is_file():
            raise JudgeError(f"judge template {path}: no such file")
        self.template, self.template_path = path.read_text(), path
        self.client = client or ChatClient(settings)
        identity = json.dumps([settings.url, settings.model, self.template])
        self.identity = hashlib.sha256(identity.encode()).hexdigest()[:16]
        folder = Path(settings.cache_dir) if settings.cache_dir else cache_root() / "judge"
        self.cache = VerdictCache(folder / f"{self.identity}.jsonl")
        self.requests = self.unreadable = 0
        self._count = threading.Lock()

    def _fill(self, **values: str) -> str:
        try:
            return self.template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise JudgeError(f"judge template {self.template_path}: {err!r} is not one of "
                             f"{sorted(values)} (write a literal brace as {{{{ or }}}})") from None

    def _ask(self, text: str) -> str:
        key = hashlib.sha256(text.encode()).hexdigest()  # the text holds prompt and answers
        reply = self.cache.get(key)
        if reply is None:
            reply = self.client.complete(text)
            with self._count:
                self.requests += 1
            self.cache.put(key, reply)
        return reply

    def _ask_all(self, texts: Sequence[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(self._ask, texts))

    def compare(self, items: Sequence[tuple[Any, str, str]]) -> list[float]:
        """Verdicts for (prompt, first, second): 1 first, 0 second, 0.5 tie (or unreadable)."""
        texts = [self._fill(instruction=render_prompt(p), output_1=a, output_2=b)
                 for p, a, b in items]
        verdicts = [parse_verdict(reply) for reply in self._ask_all(texts)]
        self.unreadable += sum(v is None for v in verdicts)
        return [0.5 if v is None else v for v in verdicts]

    def __call__(self, prompt: Any, first: str, second: str) -> float:
        return self.compare([(prompt, first, second)])[0]

    def scores(self, prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
        texts = [self._fill(instruction=render_prompt(p), output=c)
                 for p, c in zip(prompts, completions, strict=True)]
        scores = [parse_score(reply) for reply in self._ask_all(texts)]
        self.unreadable += sum(math.isnan(s) for s in scores)
        return scores


def llm_judge(spec: str, template: str | None = None, concurrency: int = 4) -> LLMJudge:
    """A pairwise judge from ``openai:URL#MODEL``."""
    settings = JudgeSettings.parse(spec)
    return LLMJudge(replace(settings, template=template, concurrency=concurrency))
