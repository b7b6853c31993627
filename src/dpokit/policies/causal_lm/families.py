"""Which batch layouts are exact for a model family, and why the others are refused.

``padded`` runs each sequence alone through the model's own attention: exact for every family
that loads. ``packed`` and ``prefix_shared`` put several sequences in one row, which is exact
only where every token mixer of the model attends through the segment plan (``attention.py``):

- a layer that carries state across tokens (Mamba / Mamba2 / Jamba / Bamba / Falcon-H1 mixers,
  RecurrentGemma's recurrence, Qwen3-Next's and Qwen3.5's gated delta nets, LFM2's and every
  causal convolution) would hand one segment's state to the next: refused;
- a family outside transformers' attention interface (Bloom, MPT, Falcon with or without
  ALiBi, StableLM: their layers never see the plan) cannot take a plan: refused;
- attention that reads row positions (Llama 4's chunked attention and its NoPE layers'
  temperature tuning, from ``cache_position``): refused;
- attention sinks (gpt-oss) under ``flex`` or ``flash_varlen`` (no sink term there): refused for
  that backend; ``sdpa_segments`` and ``mask`` compute them.

Sliding windows, soft-capping and sinks are computed by the plan (``kernels.py``). What no rule
foresees, a run's own proof (``runs/layout_proof.py``) catches on its first pairs.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> tiny = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    >>> layout_support(tiny)
    {'padded': None, 'packed': None, 'prefix_shared': None}
    >>> choose_layout("auto", layout_support(tiny), pairs=True)
    'prefix_shared'
"""

from __future__ import annotations

import re

from torch import nn

LAYOUTS = ("padded", "packed", "prefix_shared")
# token mixers that carry state from one token to the next, by class name
_STATEFUL = re.compile(r"Mamba|Recurrent|Rglru|RgLru|ShortConv|DeltaNet|LinearAttention|Rwkv|"
                       r"Mlstm|Slstm|Ssm|SSM|Lightning|Hyena")


class LayoutRefused(ValueError):
    """A batch layout that cannot be exact for this model (the message names family and why)."""


def text_config(config):
    """The language model's config (a vision-language config's text part)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family(model) -> str:
    return getattr(text_config(model.config), "model_type", None) or type(model).__name__


def is_attention_type(layer_type) -> bool:
    """A ``layer_types`` entry that attends (full, sliding, chunked, indexed, ...), not one
    that carries state (linear attention, mamba, convolution, recurrence)."""
    return isinstance(layer_type, str) and "attention" in layer_type and \
        "linear" not in layer_type


def stateful_mixer(model: nn.Module) -> str | None:
    """The first token mixer that carries state across tokens (a name), or None."""
    types = getattr(text_config(model.config), "layer_types", None) or ()
    other = sorted({t for t in types if isinstance(t, str) and not is_attention_type(t)})
    if other:
        return f"its {'/'.join(other)} layers"
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d) or _STATEFUL.search(type(module).__name__):
            return f"its {type(module).__name__}" + (f" ({name})" if name else "")
    return None


def padding_sensitive(model: nn.Module) -> str | None:
    """A token mixer whose values change with padding in the row, mask or not (a sparse
    indexer picks its top-k keys among the padding too: DeepSeek-V3.2, GLM-DSA, ...): such a
    family's padded rows run one at a time, unpadded."""
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Indexer"):
            return f"its {type(module).__name__} ({name})"
    return None


def has_sinks(model: nn.Module) -> bool:
    """Attention sinks: a per-head ``sinks`` parameter on an attention module (gpt-oss)."""
    return any(n.endswith(".sinks") or n == "sinks" for n, _ in model.named_parameters())


def reads_row_positions(config) -> str | None:
    """Attention whose math depends on a token's place in the row (not its sequence)."""
    text = text_config(config)
    if "chunked_attention" in (getattr(text, "layer_types", None) or ()):
        return f"chunked attention (attention_chunk_size={text.attention_chunk_size})"
    if getattr(text, "attn_temperature_tuning", False) and getattr(text, "no_rope_layers", None):
        return "its NoPE layers' attention temperature tuning (reads cache_position)"
    return None


def attention_layers(config) -> tuple[int, int]:
    """(attention layers, sliding-window layers among them) the config declares: every call
    with a plan is counted against these."""
    text = text_config(config)
    layers = text.num_hidden_layers
    types = getattr(text, "layer_types", None)
    if types:
        attending = [t for t in types if is_attention_type(t)]
        return len(attending), sum(t in ("sliding_attention", "local_attention") for t in types)
    sliding = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    return layers, layers if sliding else 0


def layout_support(model: nn.Module, attention_impl: str = "sdpa_segments",
                   plans: bool | None = None) -> dict[str, str | None]:
    """Per layout, None (exact) or why it cannot be; ``attention_impl`` is the resolved backend,
    ``plans`` whether the model takes segment plans (default: whether its family can)."""
    from .kernels import enable
    from .lora import unwrap_peft

    model = unwrap_peft(model)
    plans = enable(model) if plans is None else plans
    reason = stateful_mixer(model)
    reason = f"{reason} carry state across tokens, so one sequence would leak into the next" \
        if reason else None
    if reason is None and not plans:
        reason = "its attention is outside transformers' attention interface (it never sees " \
                 "the segment plan)"
    if reason is None and (indexer := padding_sensitive(model)):
        reason = f"{indexer} picks its keys by position in the row and builds its own mask"
    if reason is None and (position := reads_row_positions(model.config)):
        reason = f"{position} reads positions in the row, not in the sequence"
    if reason is None and has_sinks(model) and attention_impl in ("flex", "flash_varlen"):
        reason = f"attention_impl={attention_impl} has no attention-sink term (use " \
                 f"sdpa_segments or mask)"
    return {"padded": None, "packed": reason, "prefix_shared": reason}


def choose_layout(requested: str, support: dict[str, str | None], pairs: bool = True,
                  name: str = "this model") -> str:
    """``auto``: the fastest exact layout (prefix_shared for pairs, else packed, else padded);
    an explicit layout is kept if exact, else :class:`LayoutRefused` naming ``name`` (the
    family) and the reason."""
    if requested != "auto":
        if support.get(requested) is not None:
            raise LayoutRefused(f"batch_layout={requested} cannot be exact for {name}: "
                                f"{support[requested]}; use batch_layout=padded (or auto)")
        return requested
    for layout in (("prefix_shared",) if pairs else ()) + ("packed", "padded"):
        if support[layout] is None:
            return layout
    return "padded"


def dense_layout_reason(config, max_length: int) -> str | None:
    """Why layouts carried by a dense 4-D mask through the model's own attention (the
    vision-language room) cannot be exact, or None: one mask serves every layer, so
    sliding-window layers are exact only while no sequence reaches past the window, and layers
    with state never are (the config's ``layer_types``)."""
    text = text_config(config)
    types = getattr(text, "layer_types", None) or ()
    stateful = sorted({t for t in types if not is_attention_type(t)})
    if stateful:
        return f"its {'/'.join(stateful)} layers carry state across tokens"
    window = getattr(text, "sliding_window", None)
    if attention_layers(config)[1] and window and max_length > window:
        return (f"its sliding-window layers attend {window} tokens back, and "
                f"max_length={max_length} is longer (or max_length <= {window})")
    return None


def check_consumed(model, plan) -> None:
    """Every attention layer used the plan, and every sliding-window layer said its window;
    else the layout cannot be trusted for this family (its attention bypasses the plan)."""
    layers, sliding = attention_layers(model.config)
    windows = sum(w is not None for w in plan.windows)
    if plan.calls < layers or windows < sliding:
        raise LayoutRefused(
            f"{family(model)}: {plan.calls} of its {layers} attention layers used the segment "
            f"plan ({windows} of {sliding} sliding-window layers said their window); its "
            f"layers bypass dpokit's attention, so packed / prefix-shared rows would be wrong; "
            f"use batch_layout=padded")
