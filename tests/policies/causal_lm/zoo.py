"""Tiny causal LMs of every family transformers knows, each with its own features switched on.

The zoo of issue 39 ("every fast path is exact on every model family, or refused by name"):
``ZOO`` maps a name (a model type of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, or a variant such as
``qwen2_sliding``) to a function returning a tiny config (vocab 128, hidden 64, heads 4, kv heads
2, 2-4 layers with every layer type of the family, 4 experts top-2) with the features that show
bugs on: sliding windows, chunks and mamba chunks of 4 tokens (the sequences run 5-19),
soft-capping, head, embedding and residual multipliers, ALiBi, attention sinks, NoPE layers,
KV sharing, MoE routers. ``UNBUILDABLE`` says why each other type is not here;
``check_coverage()`` lists the types in neither (or both). ``build(name, seed)`` gives the model
in eval mode, fp32, its parameters redrawn small (norms near their neutral value);
``build_from(name, config)`` the same from a changed config. ``reference_logps(model, pairs)`` is
the ground truth: each sequence alone through the model's own forward (its head transforms
included). tests/policies/causal_lm/test_zoo_reference.py checks the zoo itself.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch

from dpokit.data.text import TokenizedPair

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WINDOW = 4  # sliding window / attention chunk, in tokens: shorter than every pair below
VOCAB = 128

# prompts 3-10 tokens, completions 2-12, sequences 5-19 tokens, each of its own length: every
# sequence runs past the window
PAIRS = [
    TokenizedPair(0, [5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 2], [15, 16]),
    TokenizedPair(1, [20, 21, 22, 23, 24, 25, 26], [27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 2],
                  [40, 41, 42, 43, 2]),
    TokenizedPair(2, [50, 51, 52, 53, 54, 55, 56, 57, 58, 59], [60, 61, 2],
                  [70, 71, 72, 73, 74, 75, 76, 2]),
]

# set wherever the family's config has the key (or an alias of it)
_SIZES = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 256, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False, "use_cache": False, "initializer_range": 0.05, "is_decoder": True,
    "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 128, "n_positions": 256, "d_model": 64,
    "n_heads": 4, "n_layers": 2, "num_layers": 2, "ffn_dim": 128, "decoder_layers": 2,
    "decoder_attention_heads": 4, "decoder_ffn_dim": 128, "encoder_layers": 1,
    "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "embedding_size": 64,
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_k": 2, "num_experts_per_token": 2,
    "top_k_experts": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "shared_intermediate_size": 32, "n_group": 1, "topk_group": 1, "num_expert_group": 1,
    "n_shared_experts": 1, "num_shared_experts": 1, "moe_num_shared_experts": 1,
    "first_k_dense_replace": 1, "router_jitter_noise": 0.0, "num_nextn_predict_layers": 0,
    # multi-head latent attention, sparse indexers
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16,
    "v_head_dim": 16, "qk_head_dim": 32, "rotary_dim": 8, "index_topk": 4, "index_head_dim": 16,
    "index_n_heads": 2,
    # linear attention, state-space mixers
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
    "linear_num_value_heads": 4, "linear_head_dim": 16, "linear_num_heads": 4,
    "mamba_d_state": 8, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1,
    "mamba_chunk_size": WINDOW, "mamba_expand": 2, "mamba_d_conv": 4, "state_size": 8,
    "time_step_rank": 8, "mamba_dt_rank": 8, "n_mamba_heads": 2,
    # the features
    "sliding_window": WINDOW, "sliding_window_size": WINDOW, "final_logit_softcapping": 3.0,
    "attn_logit_softcapping": 1.0, "query_pre_attn_scalar": 8, "logits_scaling": 4.0,
    "logit_scale": 0.5, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
    "attention_multiplier": 0.3,
}
_DROPOUTS = (
    "attention_dropout", "hidden_dropout", "dropout", "attention_probs_dropout_prob",
    "hidden_dropout_prob", "activation_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "classifier_dropout", "embedding_dropout", "residual_dropout", "resid_dropout",
    "embed_dropout", "emb_pdrop", "summary_first_dropout", "summary_last_dropout", "dropout_p",
    "layerdrop", "decoder_layerdrop", "encoder_layerdrop",
)
_TYPE_LISTS = ("layer_types", "mlp_layer_types", "layers_block_type")

SF = ["sliding_attention", "full_attention"]


def _rope(*types, **extra) -> dict:
    return {t: {"rope_type": "default", "rope_theta": 10000.0, **extra} for t in types}


_INKLING2 = {"unpadded_vocab_size": 120, "swa_num_attention_heads": 4, "swa_num_key_value_heads": 2,
             "swa_head_dim": 16, "rel_extent": 8, "d_rel": 4, "log_scaling_n_floor": 8,
             "n_layers_per_attn_res_block": 1}
# per family, applied after _SIZES (a `layer_types` here sets num_hidden_layers to its length)
FAMILIES: dict[str, dict] = {
    "bamba": {"attn_layer_indices": [1], "mamba_d_head": 16, "mamba_n_heads": 8},
    "blt": {"vocab_size": 260, "encoder_hash_byte_group_vocab": 64, "local_attention_window_len":
            WINDOW, "patcher_config": {"hidden_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "intermediate_size": 64,
                                       "sliding_window": WINDOW},
            "encoder_config": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                               "hidden_size_global": 64, "sliding_window": WINDOW},
            "decoder_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                               "hidden_size_global": 64, "intermediate_size": 64},
            "global_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                              "intermediate_size": 128}},
    "cohere_compass_text": {"layer_types": SF, "rope_parameters": {
        **_rope("sliding_attention"), "full_attention": None}},  # NoPE full layers
    "ctrl": {"dff": 128},
    "dbrx": {"attn_config": {"kv_n_heads": 2, "clip_qkv": 0.5, "rope_theta": 10000.0},
             "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}},
    "deepseek_v4": {"num_key_value_heads": 1, "head_dim": 32, "o_groups": 2, "o_lora_rank": 16,
                    "hc_mult": 2, "compress_rates": {"compressed_sparse_attention": 2,
                                                     "heavily_compressed_attention": 4}},
    "doge": {"keep_window_size": WINDOW},
    "dory": {"layer_types": SF * 2, "n_input_layers": 1, "n_recurrent_layers": 2,
             "n_output_layers": 1, "rope_parameters": _rope(*SF)},
    "dots1": {"layer_types": SF},
    "dots3_note_text": {"swa_num_attention_heads": 4, "swa_num_key_value_heads": 4,
                        "swa_q_lora_rank": 16, "swa_kv_lora_rank": 16, "swa_head_dim": 16,
                        "swa_qk_nope_head_dim": 8, "swa_v_head_dim": 16},
    "ergo": {"first_dense_intermediate_size": 128, "rope_parameters": {
        **_rope("sliding_attention"), "full_attention": None}},
    "falcon_h1": {"mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16,
                  "mamba_rms_norm": True, "lm_head_multiplier": 0.5, "key_multiplier": 0.7,
                  "attention_out_multiplier": 0.8, "attention_in_multiplier": 1.2,
                  "ssm_in_multiplier": 1.3, "ssm_out_multiplier": 0.9,
                  "mlp_multipliers": [1.2, 0.8], "ssm_multipliers": [1.1, 0.9, 1.2, 0.8, 1.05]},
    "flint": {"mlp_only_layers": [0]},
    "gemma3n_text": {"layer_types": SF * 2, "num_kv_shared_layers": 2, "laurel_rank": 8,
                     "hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": VOCAB,
                     "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0]},
    "gemma4_text": {"hidden_size_per_layer_input": 16, "vocab_size_per_layer_input": VOCAB,
                    "global_head_dim": 32, "num_global_key_value_heads": 1,
                    "attention_k_eq_v": True},
    "gemma4_unified_text": {"global_head_dim": 32, "num_global_key_value_heads": 1,
                            "attention_k_eq_v": True},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": WINDOW,
                "num_heads": 4},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "inkling_text": {"swa_num_attention_heads": 4, "swa_num_key_value_heads": 2,
                     "swa_head_dim": 16, "rel_extent": 8, "d_rel": 4},
    "inkling2_text": _INKLING2,
    "inkling2_loop_text": {**_INKLING2, "layer_types": ["hybrid_sliding", "hybrid"] * 2,
                           "loop_layer_index_start": 1, "loop_layer_index_end": 3,
                           "loop_num_passes": 2, "loop_gate_rank": 8},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
              "expert_layer_offset": 1, "use_mamba_kernels": False},
    "kolibri1_1": {"layer_types": ["sliding_attention", "indexed_attention"] * 2,
                   "mlp_only_layers": [0], "index_layers": [1], "kv_source_layers": [0, 1, 2, 1],
                   "index_num_heads": 2, "index_pool_size": 16, "index_compression": 2,
                   "index_num_local_tokens": 2, "index_num_sink_tokens": 1,
                   "mlp_only_intermediate_size": 128},
    "laguna": {"layer_types": SF, "num_attention_heads_per_layer": [4, 4]},
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "llama4_text": {"attention_chunk_size": WINDOW, "intermediate_size_mlp": 128,
                    "no_rope_layers": [1, 0], "floor_scale": WINDOW, "attn_scale": 0.5},
    "longcat_flash": {"zero_expert_num": 2},
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "chunk_size": WINDOW},
    "mellum": {"layer_types": SF},
    "minimax": {"block_size": WINDOW, "full_attn_alpha_factor": 1.1, "full_attn_beta_factor": 0.9,
                "linear_attn_alpha_factor": 1.2, "linear_attn_beta_factor": 0.8,
                "mlp_alpha_factor": 0.9, "mlp_beta_factor": 1.1},
    "minimax_m3_vl_text": {"layer_types": ["minimax_m3_sparse", "full_attention"],
                           "dense_intermediate_size": 128, "mlp_layer_types": ["dense", "sparse"],
                           "index_block_size": 2, "index_topk_blocks": 2, "index_local_blocks": 1},
    "ministral": {"layer_types": SF},
    "ministral3": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                       "original_max_position_embeddings": 8,
                                       "llama_4_scaling_beta": 0.1}},
    "mllama": {"cross_attention_layers": [1]},
    "modernbert-decoder": {"local_attention": WINDOW},
    "mpt": {"max_seq_len": 256, "attn_config": {"alibi": True, "clip_qkv": 0.5, "qk_ln": True}},
    "musicgen": {"num_codebooks": 1}, "musicgen_melody": {"num_codebooks": 1},
    "nemotron_h": {"ssm_state_size": 8, "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 1,
                   "chunk_size": WINDOW, "moe_shared_expert_intermediate_size": 32,
                   "use_mamba_kernels": False},
    "qwen4_exp_text": {"hc_lowrank": 8, "ple_embed_dim": 16, "ple_layer_ids": [1],
                       "ngram_vocab_size_base": 256, "split_ngram_parts": 2, "heads_per_ngram": 2,
                       "indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16,
                       "indexer_budget": 4, "indexer_compress_ratio": 2},
    "recurrent_gemma": {"num_hidden_layers": 3, "logits_soft_cap": 3.0, "lru_width": 64},
    "rembert": {"input_embedding_size": 32, "output_embedding_size": 32},
    "roc_bert": {"pronunciation_embed_dim": 16, "pronunciation_vocab_size": 16,
                 "shape_embed_dim": 16, "shape_vocab_size": 16},
    "smollm3": {"no_rope_layers": [1, 0]},
    "xlm": {"causal": True},
    "xlnet": {"d_inner": 128, "d_head": 16, "mem_len": None, "attn_type": "uni"},
    "xlstm": {"chunk_size": WINDOW, "num_heads": 4, "autocast_kernel_dtype": "float32",
              "output_logit_soft_cap": 3.0, "gate_soft_cap": 2.0},
    "xmod": {"default_language": "en_XX"},
    "zamba": {"use_mamba_kernels": False},
    "zamba2": {"chunk_size": WINDOW, "adapter_rank": 8, "mamba_headdim": 16, "n_mamba_heads": 8,
               "use_mamba_kernels": False},
    "zaya": {"layer_types": ["hybrid_sliding", "hybrid"], "num_experts_per_tok": 1,
             "router_hidden_size": 16},
}
# a family's optional features worth a test of their own
_QWEN_SWA = {"use_sliding_window": True, "max_window_layers": 1,
             "layer_types": ["full_attention", "sliding_attention"]}
VARIANTS: dict[str, tuple[str, dict]] = {
    "falcon_alibi": ("falcon", {"alibi": True}),
    "falcon_new_arch": ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    "qwen2_sliding": ("qwen2", _QWEN_SWA), "qwen2_moe_sliding": ("qwen2_moe", _QWEN_SWA),
    "qwen3_sliding": ("qwen3", _QWEN_SWA), "qwen3_moe_sliding": ("qwen3_moe", _QWEN_SWA),
    "smollm3_sliding": ("smollm3", _QWEN_SWA),
    "gemma4_text_moe": ("gemma4_text", {"enable_moe_block": True}),
    "gemma4_text_kv_shared": ("gemma4_text", {"layer_types": SF * 2, "num_kv_shared_layers": 2}),
    "gpt2_layer_scaled": ("gpt2", {"scale_attn_by_inverse_layer_idx": True,
                                   "reorder_and_upcast_attn": True}),
    "deepseek_v2_grouped": ("deepseek_v2", {"topk_method": "group_limited_greedy", "n_group": 2,
                                            "topk_group": 1}),
    "stablelm_parallel": ("stablelm", {"use_parallel_residual": True, "qk_layernorm": True}),
}

_SAME = "composite (text + vision) config whose causal LM is the same class as the {} entry"
_TOWER = "a {} tower inside the model; the text model is the {} entry"
UNBUILDABLE: dict[str, str] = {
    "llama4": _SAME.format("llama4_text"), "qwen3_5": _SAME.format("qwen3_5_text"),
    "qwen3_5_moe": _SAME.format("qwen3_5_moe_text"), "qwen4_exp": _SAME.format("qwen4_exp_text"),
    "dots3_note": _SAME.format("dots3_note_text"),
    "gemma3": _TOWER.format("SigLIP vision", "gemma3_text"),
    "gemma3n": _TOWER.format("vision (needs timm, not installed) and audio", "gemma3n_text"),
    "gemma4": _TOWER.format("vision and audio", "gemma4_text"),
    "gemma4_unified": _TOWER.format("vision and audio", "gemma4_unified_text"),
    "got_ocr2": "image-to-text model: a SAM vision tower ahead of a Qwen2 decoder",
    "git": "image captioner: a CLIP vision tower inside GitForCausalLM",
    "phi4_multimodal": "vision and audio encoders inside Phi4MultimodalForCausalLM",
    "moss_transcribe_diarize": "speech-to-text: an audio encoder ahead of the decoder",
    "cpmant": "not causal: its forward attends both ways (context all ones), later tokens leak",
    "prophetnet": "not causal in practice: every position's logits move with the last token",
    "reformer": "reversible layers assert model.train() for backward; LSH attention is approximate",
    "gemma4_assistant": "speculative-decoding drafter: needs the target model's shared KV states",
    "gemma4_unified_assistant": "speculative-decoding drafter: needs the target's shared KV states",
}


def _small(defaults, overrides: dict) -> dict:
    """The keyword arguments that shrink ``defaults`` (a config) and switch its features on."""
    stored = defaults.to_dict()
    known = set(stored) | set(getattr(defaults, "attribute_map", {}))
    kwargs = {k: v for k, v in _SIZES.items() if k in known}
    kwargs.update({k: 0.0 for k in _DROPOUTS if k in known})
    if "kv_lora_rank" in known:  # latent attention: one key per query head
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    kinds = {k: list(dict.fromkeys(stored[k])) for k in _TYPE_LISTS
             if isinstance(stored.get(k), list)}
    layers = max([2, *map(len, kinds.values())])
    for key, kind in kinds.items():
        kwargs[key] = [kind[i % len(kind)] for i in range(layers)]
    if kinds:
        kwargs["num_hidden_layers"] = layers
    if stored.get("text_config") is not None:
        kwargs["text_config"] = _small(defaults.text_config, overrides.get("text_config", {}))
    kwargs.update({k: v for k, v in overrides.items() if k != "text_config"})
    if "layer_types" in overrides and "num_hidden_layers" not in overrides:
        kwargs["num_hidden_layers"] = len(overrides["layer_types"])
    return kwargs


def model_class(name: str):
    """The class AutoModelForCausalLM builds for the entry's model type."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES

    return getattr(transformers, NAMES[VARIANTS.get(name, (name,))[0]])


def _config(model_type: str, overrides: dict):
    from transformers import AutoConfig

    own = model_class(model_type).config_class  # the text config, where the type is composite
    defaults = AutoConfig.for_model(model_type)
    if not isinstance(defaults, own):
        return own(**_small(own(), overrides))
    return AutoConfig.for_model(model_type, **_small(defaults, overrides))


def _entries() -> dict[str, Callable]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES

    zoo = {t: functools.partial(_config, t, FAMILIES.get(t, {}))
           for t in NAMES if t not in UNBUILDABLE}
    zoo.update({n: functools.partial(_config, t, {**FAMILIES.get(t, {}), **o})
                for n, (t, o) in VARIANTS.items()})
    return zoo


ZOO: dict[str, Callable] = _entries()


def check_coverage() -> list[str]:
    """The model types of the causal-LM mapping in neither ZOO nor UNBUILDABLE, or in both."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES

    return [t for t in NAMES if (t in ZOO) == (t in UNBUILDABLE)]


def build(name: str, seed: int = 0, attn_implementation: str = "eager"):
    """The tiny model ``name`` in eval mode, fp32, dropout off, parameters redrawn from ``seed``:
    matrices N(0, 0.08), vectors their default plus N(0, 0.05) (norms stay near 1, or near 0
    where a family scales by 1 + w), attention sinks N(0, 1)."""
    return build_from(name, ZOO[name](), seed, attn_implementation)


def build_from(name: str, config, seed: int = 0, attn_implementation: str = "eager"):
    """``build`` with the entry's config changed (e.g. a feature switched off)."""
    torch.manual_seed(seed)
    model = model_class(name)._from_config(config, attn_implementation=attn_implementation,
                                           dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if pname.endswith("sinks"):
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise * 0.08)
            else:
                p.add_(noise * 0.05)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.float().eval()


def sequence_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Sum of the completion's log-probs, the sequence alone through the model's own forward."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids, use_cache=False).logits[0].float()
    logps = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return logps.gather(-1, torch.tensor(completion)[:, None]).sum()


def reference_logps(model, pairs=PAIRS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(values (2B,): chosen..., rejected..., gradients of sum(values * linspace(0.5, 1.5, 2B))
    by parameter name; zeros for a parameter the forward does not reach)."""
    model.zero_grad(set_to_none=True)
    values = torch.stack([sequence_logps(model, p.prompt_ids, p.chosen_ids) for p in pairs]
                         + [sequence_logps(model, p.prompt_ids, p.rejected_ids) for p in pairs])
    (values * torch.linspace(0.5, 1.5, values.shape[0])).sum().backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return values.detach(), grads
