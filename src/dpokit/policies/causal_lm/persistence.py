"""What a trained causal LM keeps: its trained tensors by name (gathered when sharded), the
saved model or adapter in the ordinary format with its tokenizer, what it is (model card), the
fingerprint of the reference weights (the reference cache's key)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...core.protocols import PolicyDescription
from ...core.sharding import assign, whole, whole_state_dict
from .lora import REFERENCE_ADAPTER, is_peft, unwrap_peft


class Persistence:
    """The persistence half of :class:`~dpokit.policies.causal_lm.CausalLMPolicy`."""

    MODALITY = "causal_lm"

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole tensors (a sharded model's gathered from every process)."""
        with torch.no_grad():
            return {n: whole(p).detach().clone()
                    for n, p in self.named_trainable_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_trainable_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for name, value in state.items():
            assign(params[name], value)

    def save_pretrained(self, directory: str | Path | None) -> None:
        """Weights (or the trained LoRA adapter) in the ordinary HF format, with the tokenizer.
        Sharded: every process gathers the whole weights; only a given ``directory`` writes."""
        state = None
        if self.sharded:
            state = whole_state_dict(self.model)
        if directory is None:
            return
        extra = {} if state is None else {"state_dict": state}
        if self.merge_on_save:  # (never sharded: the config refuses merge_adapter with fsdp)
            from .lora import merged_copy

            merged_copy(self.model).save_pretrained(directory, safe_serialization=True)
        elif is_peft(self.model) and REFERENCE_ADAPTER in self.model.peft_config:
            self.model.save_pretrained(directory, safe_serialization=True,
                                       selected_adapters=["default"], **extra)
        else:
            self.model.save_pretrained(directory, safe_serialization=True, **extra)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        if self.segments is not None:  # the loader installs the table again from this
            self.segments.write(directory)

    def describe(self) -> PolicyDescription:
        """A LoRA adapter on the base it was loaded from, that base with the adapter merged in
        (``merge_on_save``), or a full model."""
        from .models import model_source

        adapter = is_peft(self.model)
        kind = "merged" if adapter and self.merge_on_save else "adapter" if adapter else "full"
        return PolicyDescription(self.MODALITY, model_source(self.model), kind,
                                 "peft" if kind == "adapter" else "transformers")

    def fingerprint(self) -> str:
        """Identifies the reference weights for the reference-log-prob cache."""
        model = self.reference_model if self.reference_model is not None else self.model
        base = unwrap_peft(model)
        checksum = 0.0
        with torch.no_grad():
            for name, p in base.named_parameters():
                frozen_adapter = (self.reference_mode == "adapter_copy"
                                  and f".{REFERENCE_ADAPTER}." in name)
                if "lora_" not in name or frozen_adapter:
                    p = whole(p).double()  # ZeRO-3 / FSDP2: gathered (every process calls)
                    checksum += float(p.sum()) + float(p.abs().sum()) * 1e-3
        info = {"name": getattr(base.config, "_name_or_path", ""), "checksum": repr(checksum),
                "class": type(base).__name__, "reference": self.reference_mode,
                # the token weights change the scores: LD-DPO, SamPO
                "ld_alpha": self.ld_alpha, "sampo_seed": self.sampo_seed}
        return json.dumps(info, sort_keys=True)
