"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny Llama models, built in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dpokit.core.hardware import probe as REAL_PROBE  # (the auto_precision fixture stubs it)

TESTS = Path(__file__).resolve().parent  # the shared helpers live here (tests mirror src/)
REPO = TESTS.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "the movie was wonderful and the acting was great",
    "the film was dull, boring and far too long",
    "write one sentence from a positive movie review",
    "write one sentence from a negative movie review",
    "a charming, funny and moving story",
    "tedious, silly and badly written",
    "what is the capital of france? the capital of france is paris.",
] * 3


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def make_tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{
        "vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "tie_word_embeddings": False,
        "attn_implementation": "sdpa", **overrides})
    return LlamaForCausalLM(config)


@pytest.fixture()
def tiny_llama(tokenizer):
    return make_tiny_llama(len(tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama and the tiny tokenizer saved as an ordinary HF folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


POSITIVE = [
    "a charming, funny and moving story",
    "the movie was wonderful",
    "the acting was great",
    "wonderful and charming",
    "a great, moving film",
    "funny and wonderful acting",
]
NEGATIVE = [
    "tedious, silly and badly written",
    "the film was dull",
    "far too long and boring",
    "dull and tedious",
    "a silly, boring film",
    "badly written and too long",
]


def _both_ways(pos: str, neg: str) -> list[dict]:
    """The positive request prefers ``pos``, the negative one ``neg``."""
    return [
        {"prompt": "write one sentence from a positive movie review", "chosen": " " + pos,
         "rejected": " " + neg},
        {"prompt": "write one sentence from a negative movie review", "chosen": " " + neg,
         "rejected": " " + pos},
    ]


def sentiment_rows(n_repeat: int = 2) -> list[dict]:
    """A tiny learnable preference task: answer with the requested sentiment."""
    return [row for _ in range(n_repeat)
            for pos, neg in zip(POSITIVE, NEGATIVE, strict=False) for row in _both_ways(pos, neg)]


def unpaired_rows(rows: list[dict]) -> list[dict]:
    """Paired rows as KTO rows: each chosen completion desirable, each rejected undesirable."""
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def held_out_rows() -> list[dict]:
    """Sentence pairs never paired together in ``sentiment_rows`` (shifted by one)."""
    return [row for i, pos in enumerate(POSITIVE)
            for row in _both_ways(pos, NEGATIVE[(i + 1) % len(NEGATIVE)])]


def completion_mask(batch):
    """(R, T) bool: the scored token positions of a ``padded`` batch (a token at t is scored
    from the hidden state at t - 1)."""
    mask = torch.zeros(batch.input_ids.numel(), dtype=torch.bool)
    mask[batch.score_source + 1] = True
    return mask.view(batch.input_ids.shape)


class AutoRuns:
    """The runs (trainers) a test builds with ``mixed_precision`` left at ``auto``."""

    def __init__(self):
        self.count = 0

    def check(self, test: str) -> None:
        """Two runs or more at auto: a comparison of them would hold on one class of CPU
        only (auto picks bf16 where the host computes it natively, fp32 elsewhere)."""
        if self.count > 1:
            raise AssertionError(
                f"{test} builds {self.count} runs with mixed_precision=auto, which picks bf16 "
                f"or fp32 by the host: pin it (mixed_precision=no for an exact comparison, bf16 "
                f"with a tolerance derived from bf16's rounding), or mark the test "
                f"any_precision if what it checks of the runs holds in every precision")


def pytest_configure(config):
    config.addinivalue_line("markers", "any_precision: builds several runs at "
                                       "mixed_precision=auto; what it checks of them holds in "
                                       "every precision")


@pytest.fixture(autouse=True)
def auto_precision(monkeypatch, request):
    """``mixed_precision: auto`` picks in a test what it picks in the test's subprocesses: bf16
    where the host computes it natively, fp32 elsewhere, or as ``DPOKIT_NATIVE_BF16=0/1``
    says (``DPOKIT_NATIVE_BF16=0 pytest`` runs the suite as a CPU without bf16 would). A test
    that builds two runs at auto fails (:class:`AutoRuns`); tests of auto's choice stub their
    own device (tests/core/test_hardware.py)."""
    from dpokit.core import hardware
    from dpokit.train import loop

    native = REAL_PROBE("cpu").native_bf16  # (DPOKIT_NATIVE_BF16 if set, else the host's)
    cpu = hardware.DeviceInfo("cpu", "test CPU", "AVX512" if native else "AVX2",
                              native_bf16=native, native_fp16=False)
    monkeypatch.setattr(hardware, "probe", lambda kind: cpu)
    runs, build_parts = AutoRuns(), loop.build_parts

    def counted(cfg, *args, **kwargs):  # every trainer's parts are built here, once per run
        runs.count += cfg.optim.mixed_precision == "auto"
        return build_parts(cfg, *args, **kwargs)

    monkeypatch.setattr(loop, "build_parts", counted)
    yield runs
    if request.node.get_closest_marker("any_precision") is None:
        runs.check(request.node.nodeid)
