"""Prompt conditioning for small image generators: a prompt's words as a sequence of learned
vectors (the ``encoder_hidden_states`` a diffusers UNet cross-attends to), for a closed
vocabulary such as "a red circle". Real text-to-image models bring their own text encoder:
:class:`CLIPPromptEncoder` wraps Stable Diffusion 1.x / 2.x's (frozen),
:class:`SDXLPromptEncoder` SDXL's two, with the pooled embedding and the added time ids its
UNet also reads (:func:`sdxl_unet_call`).

    >>> encoder = WordEncoder(["red", "blue", "circle"], dim=4, length=3)
    >>> encoder(["a red circle", "blue"]).shape
    torch.Size([2, 3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

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


class FrozenEncoder(nn.Module):
    """A frozen text encoder stays in eval mode when its policy trains (T5's dropout would
    otherwise draw other masks for the policy's and the reference's passes)."""

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)


class CLIPPromptEncoder(FrozenEncoder):
    """A frozen CLIP text encoder and its tokenizer (Stable Diffusion's conditioning):
    prompts -> (E, 77, D) last hidden states."""

    def __init__(self, tokenizer, text_encoder: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        ids = _ids(self.tokenizer, prompts, next(self.text_encoder.parameters()).device)
        return self.text_encoder(ids).last_hidden_state  # (E, L, D)


def _ids(tokenizer, prompts: list[str], device) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids.to(device)  # (E, L)


def _clip_states(tokenizers, encoders, prompts: list[str], device):
    """Each CLIP encoder's penultimate hidden states (E, L, D_k), side by side, and each one's
    pooled projection (E, P_k) (the ones that have it), in order."""
    states, pooled = [], []
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        out = encoder(_ids(tokenizer, prompts, device), output_hidden_states=True)
        states.append(out.hidden_states[-2])  # (E, L, D_k)
        if getattr(out, "text_embeds", None) is not None:
            pooled.append(out.text_embeds)  # (E, P_k)
    return torch.cat(states, dim=-1), pooled


@dataclass
class SDXLCondition:
    """What an SDXL UNet reads of E prompts. hidden: (E, L, D1 + D2) the two text encoders'
    penultimate hidden states side by side; pooled: (E, P) the second encoder's projected
    pooled embedding; time_ids: (E, 6) original size, crop corner and target size."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor


class SDXLPromptEncoder(FrozenEncoder):
    """SDXL's frozen conditioning (as diffusers' ``StableDiffusionXLPipeline.encode_prompt``
    without classifier-free guidance): CLIP ViT-L and OpenCLIP ViT-bigG, the penultimate layer
    of each, the second's pooled projection, and the added time ids of an uncropped
    ``resolution`` x ``resolution`` image."""

    def __init__(self, tokenizers, text_encoders: list[nn.Module], resolution: int):
        super().__init__()
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList([e.requires_grad_(False).eval()
                                            for e in text_encoders])
        self.resolution = resolution

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> SDXLCondition:
        device = next(self.text_encoders[0].parameters()).device
        hidden, pooled = _clip_states(self.tokenizers, self.text_encoders, prompts, device)
        r = self.resolution
        time_ids = torch.tensor([r, r, 0, 0, r, r], dtype=hidden.dtype, device=device)
        return SDXLCondition(hidden, pooled[-1], time_ids.expand(len(prompts), 6))


def sdxl_unet_call(model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                   condition: SDXLCondition) -> torch.Tensor:
    """An SDXL UNet's call: the text states cross-attended to, the pooled embedding and the
    time ids as its added conditioning -> predicted noise (S, C, H, W)."""
    return model(noisy, timesteps, encoder_hidden_states=condition.hidden,
                 added_cond_kwargs={"text_embeds": condition.pooled,
                                    "time_ids": condition.time_ids}).sample


@dataclass
class SD3Condition:
    """What an SD3 transformer reads of E prompts. hidden: (E, L_clip + L_t5, J) the two CLIP
    encoders' penultimate states side by side, zero-padded to the joint width J, then the T5
    states (zeros without T5); pooled: (E, P1 + P2) both CLIP pooled projections."""

    hidden: torch.Tensor
    pooled: torch.Tensor


class SD3PromptEncoder(FrozenEncoder):
    """Stable Diffusion 3's frozen conditioning (as diffusers' ``StableDiffusion3Pipeline.
    encode_prompt`` without guidance): two CLIP encoders with projections and, when the folder
    has one, a T5 encoder read to ``t5_length`` tokens (diffusers' training scripts: 77)."""

    def __init__(self, tokenizers, text_encoders: list[nn.Module], joint_dim: int,
                 t5_length: int = 77):
        super().__init__()
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList([e.requires_grad_(False).eval()
                                            for e in text_encoders])
        self.joint_dim, self.t5_length = joint_dim, t5_length

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> SD3Condition:
        device = next(self.text_encoders[0].parameters()).device
        clip, pooled = _clip_states(self.tokenizers[:2], self.text_encoders[:2], prompts,
                                    device)  # (E, L, D1 + D2), 2 x (E, P_k)
        clip = nn.functional.pad(clip, (0, self.joint_dim - clip.shape[-1]))  # (E, L, J)
        if len(self.text_encoders) > 2:
            ids = self.tokenizers[2](prompts, padding="max_length", truncation=True,
                                     max_length=self.t5_length,
                                     return_tensors="pt").input_ids.to(device)
            t5 = self.text_encoders[2](ids).last_hidden_state  # (E, T, J)
        else:
            t5 = clip.new_zeros(len(prompts), self.t5_length, self.joint_dim)
        return SD3Condition(torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1))


def sd3_transformer_call(model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                         condition: SD3Condition) -> torch.Tensor:
    """An SD3 transformer's call: latents, the flow timestep, the joint text states and the
    pooled projections -> the predicted velocity (S, C, H, W)."""
    return model(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=condition.hidden,
                 pooled_projections=condition.pooled).sample
