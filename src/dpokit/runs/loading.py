"""One loader of "a model or adapter folder", for every modality: what ``dpokit eval``,
``dpokit pairs sample``, the harness and the experiments load a trained model with.

A folder names its modality: a ``dpokit.json`` written next to every final model
(``{"modality": ...}``), else a diffusers pipeline (``model_index.json``), else a
``vision_config`` in the (base) model's config, else a causal LM. A LoRA adapter folder
loads its base and applies the adapter; its reference is the base (adapter off) unless
``reference`` names another model.

    >>> policy = load_policy("outputs/quickstart/final")     # doctest: +SKIP
    >>> policy.describe().modality                           # doctest: +SKIP
    'causal_lm'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config.schema import ModelConfig
from ..core.protocols import Policy
from ..policies.causal_lm.lora import adapter_base
from ..policies.causal_lm.models import EMBEDDED_ALIASES

MODALITIES = ("causal_lm", "vision_language", "recommender", "diffusion")


def folder_modality(name: str) -> str:
    """The modality of a model folder, adapter folder or hub name (see the module doc)."""
    marker = Path(name) / "dpokit.json"
    if marker.is_file():
        return json.loads(marker.read_text()).get("modality", "causal_lm")
    if (Path(name) / "model_index.json").is_file():  # a diffusers pipeline folder
        return "diffusion"
    base = adapter_base(name) or name
    if base in EMBEDDED_ALIASES:
        return "causal_lm"
    from ..policies.vision_language.models import is_vision_language

    return "vision_language" if is_vision_language(base) else "causal_lm"


def model_modality(m: ModelConfig) -> str:
    """The modality of a run's model section (its starting adapter or model)."""
    return folder_modality(m.adapter or m.name)


def load_policy(name: str, reference: str | None = None,
                dtype: torch.dtype = torch.float32) -> Policy:
    """A trained model to evaluate or sample from, in eval mode, as its modality's policy.

    ``name``: a model folder, hub name, ``smollm2``, or a LoRA adapter folder (its base
    loaded, the adapter applied; the tokenizer or processor from the folder when it holds
    one). ``reference``: the model the reference-based figures compare with (default: an
    adapter's base; a full model has none unless given)."""
    modality = folder_modality(name)
    if modality == "diffusion":
        return _diffusion(name, dtype)
    if modality == "recommender":
        from ..policies.recommender import load_session_policy

        return load_session_policy(name, reference=reference is not None)
    if modality == "vision_language":
        return _vision_language(name, dtype)
    if modality != "causal_lm":
        raise ValueError(f"{name}: a {modality} folder; loadable modalities: "
                         f"{', '.join(MODALITIES)}")
    return _causal_lm(name, reference, dtype)


def _causal_lm(name: str, reference: str | None, dtype: torch.dtype) -> Policy:
    from peft import PeftModel

    from ..policies.causal_lm import CausalLMPolicy
    from ..policies.causal_lm.models import load_causal_lm, load_tokenizer
    from ..policies.causal_lm.segments import SegmentSpec, install_segments

    base = adapter_base(name)
    tokenizer = load_tokenizer(tokenizer_source(name))
    segments = SegmentSpec.read(name)  # Instructional Segment Embeddings, installed again
    net = load_causal_lm(base or name, dtype)
    if segments is not None:  # an adapter holds its table; a full model's is read in here
        install_segments(net, tokenizer, segments, full_model=name if base is None else None)
    if base is not None:
        net = PeftModel.from_pretrained(net, name).eval()
        if reference is None:
            return CausalLMPolicy(net, tokenizer, reference="adapter", segments=segments)
    else:
        net = net.eval()
    if reference is None:
        return CausalLMPolicy(net, tokenizer, reference="none", segments=segments)
    ref_base = adapter_base(reference)
    ref = (PeftModel.from_pretrained(load_causal_lm(ref_base, dtype), reference).merge_and_unload()
           if ref_base else load_causal_lm(reference, dtype))
    return CausalLMPolicy(net, tokenizer, reference="external", reference_model=ref.eval(),
                          segments=segments)


def _vision_language(name: str, dtype: torch.dtype) -> Policy:
    from peft import PeftModel

    from ..policies.vision_language import VisionLanguagePolicy
    from ..policies.vision_language.models import load_processor, load_vision_language_model

    base = adapter_base(name)
    model = load_vision_language_model(base or name, dtype=dtype)
    if base is not None:
        model = PeftModel.from_pretrained(model, name)
    model.config.use_cache = True
    return VisionLanguagePolicy(model.eval(), load_processor(name),
                                reference="adapter" if base is not None else "none")


def _diffusion(name: str, dtype: torch.dtype) -> Policy:
    """A pipeline folder, or a trained run's final/ on the pipeline its ``dpokit.json``
    names."""
    from ..policies.diffusion.pipeline import load_trained

    marker = Path(name) / "dpokit.json"
    if not marker.is_file():  # the pipeline folder itself
        return load_trained(name, name, "full", dtype)
    described = json.loads(marker.read_text())
    return load_trained(name, described["model"], described.get("kind", "full"), dtype)


def _has_tokenizer(folder: str) -> bool:
    return (Path(folder) / "tokenizer_config.json").is_file()


def tokenizer_source(name: str, tokenizer: str | None = None) -> str:
    """Where a causal LM's tokenizer loads from, the one rule of every run and loader:
    ``tokenizer`` when set; an adapter folder's own tokenizer when it saved one (an SFT run's
    added tokens), else its base's; else the model itself.

    >>> tokenizer_source("HuggingFaceTB/SmolLM2-135M", "my-tokenizer")
    'my-tokenizer'
    """
    if tokenizer:
        return tokenizer
    base = adapter_base(name)
    return name if base is None or _has_tokenizer(name) else base
