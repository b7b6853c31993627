"""LoRA for causal LMs through peft: a new adapter, or an existing one to train further with
a frozen copy of it as the reference (the SFT-then-DPO hand-off).

    >>> model = apply_lora(base, r=16, alpha=32)                # doctest: +SKIP
    >>> model = load_adapter(base, "outputs/sft/final")         # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

REFERENCE_ADAPTER = "reference"  # the frozen copy of a starting adapter (adapter_copy)


def unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               target_modules: list[str] | str | None = None, use_dora: bool = False,
               use_rslora: bool = False, modules_to_save: list[str] | None = None):
    """Wrap ``model`` with a fresh LoRA adapter (every linear layer but the LM head by default;
    ``target_modules`` by name or ``"all-linear"``), optionally DoRA and / or rsLoRA;
    ``modules_to_save`` train in full and are saved with the adapter (a new projector, say)."""
    from peft import LoraConfig, get_peft_model

    if target_modules in (None, ["all-linear"]):
        target_modules = "all-linear"
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      use_dora=use_dora, use_rslora=use_rslora, task_type="CAUSAL_LM",
                      modules_to_save=modules_to_save or None)
    return get_peft_model(model, lora)


def quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """QLoRA's 4-bit NF4 base (double quantization; matmuls in ``compute_dtype``: bf16, or fp16
    on a GPU without bf16 units) through bitsandbytes; a clear error on a machine that cannot
    run it."""
    if not torch.cuda.is_available():
        raise RuntimeError("quantization=4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit "
                           "kernels do not run on this machine (torch.cuda.is_available() is "
                           "False). Train LoRA on the unquantized base (quantization=none) here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError("quantization=4bit (QLoRA) needs bitsandbytes: pip install "
                           "bitsandbytes") from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def merged_copy(peft_model):
    """A plain model: a copy of ``peft_model``'s base with its ``"default"`` adapter merged in
    (the original keeps its adapter, so its reference still works)."""
    import copy

    merged = copy.deepcopy(peft_model)
    for name in list(merged.peft_config):
        if name != "default":
            merged.delete_adapter(name)
    return merged.merge_and_unload()


def load_adapter(model, adapter_dir: str | Path, with_reference: bool = True):
    """Load a saved LoRA adapter onto ``model`` as the trainable ``"default"`` adapter and,
    with ``with_reference``, a second frozen copy named ``"reference"``."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    if with_reference:
        peft_model.load_adapter(str(adapter_dir), adapter_name=REFERENCE_ADAPTER,
                                is_trainable=False)
        peft_model.set_adapter("default")
    return peft_model


def add_reference_copy(peft_model):
    """Give a LoRA model a frozen copy of its ``"default"`` adapter, named ``"reference"``, so
    the reference can later be moved to the trained adapter (iterative DPO)."""
    import copy

    import torch

    config = copy.deepcopy(peft_model.peft_config["default"])
    peft_model.add_adapter(REFERENCE_ADAPTER, config)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            marker = f".{REFERENCE_ADAPTER}."
            if marker in name:
                p.copy_(params[name.replace(marker, ".default.")])
                p.requires_grad_(False)
    peft_model.set_adapter("default")
    return peft_model


def adapter_base(folder: str | Path) -> str | None:
    """The base model a saved adapter folder names, or None when it is not an adapter."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("base_model_name_or_path")
