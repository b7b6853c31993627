"""An image-text-to-text model as a :class:`~dpokit.core.Policy`.

The scoring is the causal LM's (:class:`~dpokit.policies.causal_lm.CausalLMPolicy`): the body
runs once over the batch's rows with the prompts' pixel values (``batch.model_inputs``), the
model merges the image features into its image tokens, and the chunked LM head scores the
completion tokens. What differs is declared here: the processor (saved with the model, used
for generation), no segment attention (the dense 4-D mask carries the layouts) and no
sharding.

    >>> policy = VisionLanguagePolicy(model, processor, reference="adapter")  # doctest: +SKIP
    >>> policy.answer(["What colour is the square?"], [[image]])             # doctest: +SKIP
    ['red']
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..causal_lm.policy import CausalLMPolicy, ReferenceMode


class VisionLanguagePolicy(CausalLMPolicy):
    """``model``: an ``AutoModelForImageTextToText`` (optionally peft-wrapped); ``processor``
    its ``AutoProcessor``. ``reference`` and the other options as for text models."""

    MODALITY = "vision_language"

    def __init__(self, model: nn.Module, processor, reference: ReferenceMode = "none",
                 reference_model: nn.Module | None = None, logprob_impl: str = "chunked",
                 chunk_size: int = 256, ld_alpha: float | None = None,
                 merge_on_save: bool = False, sampo_seed: int | None = None):
        super().__init__(model, processor.tokenizer, reference, reference_model, logprob_impl,
                         chunk_size, ld_alpha, attention_impl="mask",
                         merge_on_save=merge_on_save, sampo_seed=sampo_seed,
                         segment_plans=False)
        self.processor = processor
        self.capabilities = dataclasses.replace(self.capabilities, sharding=False)

    def save_pretrained(self, directory: str | Path | None) -> None:
        super().save_pretrained(directory)
        if directory is not None:
            self.processor.save_pretrained(directory)

    @torch.no_grad()
    def answer(self, prompts: list, images: list[list], max_new_tokens: int = 32,
               batch_size: int = 16) -> list[str]:
        """Greedy replies to ``prompts`` (each a string, its images first, or messages with
        image placeholders) with their lists of images, ``batch_size`` at a time, left-padded.

        The plain twin is ``batch_size=1``; a test checks they agree.
        """
        from .data import to_messages

        model, processor, tokenizer = self.model, self.processor, self.processor.tokenizer
        device = next(model.parameters()).device
        replies: list[str] = []
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            with self._eval_mode(model):
                for start in range(0, len(prompts), batch_size):
                    chunk = list(zip(prompts[start:start + batch_size],
                                     images[start:start + batch_size], strict=True))
                    texts = [processor.apply_chat_template(to_messages(p, len(i)), tokenize=False,
                                                           add_generation_prompt=True)
                             for p, i in chunk]
                    pictures = [i for _, i in chunk]
                    inputs = processor(text=texts, images=pictures if any(pictures) else None,
                                       return_tensors="pt", padding=True,
                                       add_special_tokens=False).to(device)
                    out = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
                    new = out[:, inputs["input_ids"].shape[1]:]  # (b, new tokens)
                    replies += [t.strip() for t in
                                tokenizer.batch_decode(new, skip_special_tokens=True)]
        finally:
            tokenizer.padding_side = side
        return replies
