"""bench/bench_dpo.py's FLOP estimate, against numbers worked out by hand.

The bench reports each system's model FLOPs per step; TRL's over dpokit's is the speedup the
two would show at equal GFLOP/s, so the estimate is checked here on one tiny example.
"""

import importlib.util

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dpo", REPO / "bench" / "bench_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words(text):  # a tokenizer of one token per word
    return {"input_ids": text.split()}


CONFIG = dict(hidden_size=4, num_hidden_layers=1, num_attention_heads=1, head_dim=4,
              num_key_value_heads=1, intermediate_size=8, vocab_size=10)


@pytest.mark.parametrize("lora,mult", [(False, 6), (True, 4)])
def test_step_flops_by_hand(bench, lora, mult):
    """Prompt 2 tokens, chosen 1, rejected 3. Linear layers: q, k, v, o 4 x 4 each, the MLP
    3 x 4 x 8: 160 parameters; the head 4 x 10 = 40. Attention: 3 (forward + backward) x 4 x
    q x k x 4 (width) = 48 q k. dpokit: 6 unique tokens, 4 completion tokens scored; attention
    over prompt + chosen (3 x 3 / 2) and rejected against prompt + its causal half
    (3 x 3.5): 48 x (4.5 + 10.5) = 720. TRL: 2 sequences padded to 5 tokens, attention 5 x 5
    each, the same 4 completion tokens scored. The floor: dpokit's tokens, all scored."""
    row = {"prompt": "a b", "chosen": "c", "rejected": "d e f"}
    flops = bench.step_flops([row], words, CONFIG, lora)
    assert flops["dpokit"] == mult * (160 * 6 + 40 * 4) + 720
    assert flops["floor"] == mult * 200 * 6 + 720
    assert flops["trl"] == 2 * (mult * 160 * 5 + 48 * 25) + mult * 40 * 4
