"""LoRA for causal LMs through peft: a new adapter, or an existing one to train further with
a frozen copy of it as the reference (the SFT-then-DPO hand-off).

    >>> model = apply_lora(base, r=16, alpha=32)                # doctest: +SKIP
    >>> model = load_adapter(base, "outputs/sft/final")         # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from .policy import REFERENCE_ADAPTER


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               target_modules: list[str] | None = None):
    """Wrap ``model`` with a fresh LoRA adapter (every linear layer but the LM head by default)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules or "all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


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


def load_for_generation(name_or_path: str):
    """(model, tokenizer) for sampling: a model folder or hub name, or a LoRA adapter folder
    (its base loaded, the adapter applied); in eval mode."""
    from peft import PeftModel

    from .models import load_causal_lm, load_tokenizer

    base = adapter_base(name_or_path)
    if base is None:
        return load_causal_lm(name_or_path).eval(), load_tokenizer(name_or_path)
    model = PeftModel.from_pretrained(load_causal_lm(base), str(name_or_path))
    tokenizer_dir = name_or_path if (Path(name_or_path) / "tokenizer_config.json").is_file() \
        else base
    return model.eval(), load_tokenizer(tokenizer_dir)
