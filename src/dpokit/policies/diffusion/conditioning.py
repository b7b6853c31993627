"""Prompt conditioning for small image generators: a prompt's words as a sequence of learned
vectors (the ``encoder_hidden_states`` a diffusers UNet cross-attends to), for a closed
vocabulary such as "a red circle". Real text-to-image models bring their own text encoder;
:class:`CLIPPromptEncoder` wraps one (frozen).

    >>> encoder = WordEncoder(["red", "blue", "circle"], dim=4, length=3)
    >>> encoder(["a red circle", "blue"]).shape
    torch.Size([2, 3, 4])
"""

from __future__ import annotations

import torch
from torch import nn


class WordEncoder(nn.Module):
    """Each known word of a prompt -> its vector, padded (a learned pad vector) to ``length``;
    unknown words are dropped (articles), a prompt with none is an error."""

    def __init__(self, vocabulary: list[str], dim: int, length: int = 4):
        super().__init__()
        self.vocabulary = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.vocabulary)}  # 0: padding
        self.length = length
        self.embed = nn.Embedding(len(self.vocabulary) + 1, dim)
        self.position = nn.Parameter(torch.zeros(length, dim))

    def ids(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            known = [self.index[w] for w in prompt.lower().replace(",", " ").split()
                     if w in self.index]
            if not known:
                raise ValueError(f"prompt {prompt!r} has no word of the vocabulary "
                                 f"{self.vocabulary}")
            rows.append((known + [0] * self.length)[:self.length])
        return torch.tensor(rows, device=self.embed.weight.device)  # (E, L)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.embed(self.ids(prompts)) + self.position  # (E, L, D)


class CLIPPromptEncoder(nn.Module):
    """A frozen CLIP text encoder and its tokenizer (Stable Diffusion's conditioning):
    prompts -> (E, 77, D) last hidden states."""

    def __init__(self, tokenizer, text_encoder: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        ids = ids.to(next(self.text_encoder.parameters()).device)
        return self.text_encoder(ids).last_hidden_state  # (E, L, D)
