"""Hidden states of a causal LM on plain texts: what the embedding-geometry figures read.

``encode_texts`` tokenizes (right-padded); ``hidden_states`` runs the transformer body on the
input embeddings, optionally perturbed by ``noise`` (a function of the clean embeddings), and
returns every layer's hidden states with the mask. Pooling and the TDI math live in
``dpokit.eval.tdi``; this module only knows how a causal LM is run.

    >>> texts = encode_texts(tokenizer, ["A cat.", "A CAT!"], max_length=32)  # doctest: +SKIP
    >>> out = hidden_states(model, texts)                                      # doctest: +SKIP
    >>> len(out.layers), out.layers[-1].shape        # L+1, (2, T, H)          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .lora import unwrap_peft


@dataclass
class EncodedTexts:
    """input_ids (N, T) right-padded; attention_mask (N, T) 1 on real tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> EncodedTexts:
        ids, mask = self.input_ids[index], self.attention_mask[index]
        width = int(mask.sum(1).max())  # drop columns that are padding in every selected row
        return EncodedTexts(ids[:, :width], mask[:, :width])

    def to(self, device: torch.device | str) -> EncodedTexts:
        return EncodedTexts(self.input_ids.to(device), self.attention_mask.to(device))


@dataclass
class HiddenStates:
    """layers: L+1 tensors (N, T, H), the input embeddings (fed, so perturbed when noised)
    first, then each decoder layer's output (the last after the final norm); mask (N, T)."""

    layers: tuple[torch.Tensor, ...]
    mask: torch.Tensor


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> EncodedTexts:
    """Tokenize plain texts (the tokenizer's special tokens, no chat template), cut to
    ``max_length`` tokens, right-padded."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return EncodedTexts(ids, mask)


def input_embeddings(model: nn.Module, texts: EncodedTexts) -> torch.Tensor:
    """(N, T, H) token embeddings of the model (through any adapter on them)."""
    return model.get_input_embeddings()(texts.input_ids)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The body's decoder blocks, in order: the modules of the classes the model declares
    unsplittable (``_no_split_modules``: LlamaDecoderLayer, GPT2Block, ...)."""
    inner = unwrap_peft(model)
    names = set(getattr(inner, "_no_split_modules", None) or ())
    blocks = [m for m in inner.base_model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(inner).__name__} declares no decoder block class "
                         f"(_no_split_modules)")
    return blocks


def hidden_states(model: nn.Module, texts: EncodedTexts,
                  noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  at_layer: int = 0) -> HiddenStates:
    """Run the transformer body (not the LM head) on the texts' input embeddings, plus
    ``noise(states)`` added where ``at_layer`` says: 0 the input embeddings, k the output of
    decoder block k (``HiddenStates.layers[k]``, not after the last block's final norm);
    gradients flow when the caller enables them."""
    body = unwrap_peft(model).base_model  # LlamaModel, GPT2Model, ...: adapters stay active
    embeds = input_embeddings(model, texts)  # (N, T, H)
    hook = None
    if noise is not None and at_layer == 0:
        embeds = embeds + noise(embeds)  # (N, T, H)
    elif noise is not None:
        def add_noise(module, args, output):
            states = output[0] if isinstance(output, tuple) else output  # (N, T, H)
            noisy = states + noise(states)
            return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

        hook = decoder_layers(model)[at_layer - 1].register_forward_hook(add_noise)
    try:
        out = body(inputs_embeds=embeds, attention_mask=texts.attention_mask,
                   output_hidden_states=True, use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
    return HiddenStates(tuple(out.hidden_states), texts.attention_mask)
