"""The training configuration in sections, the single source of truth.

Each field is declared once, with its default, a one-line meaning and (for numbers) its
domain (``dpokit config`` prints them all); the ``loss`` section's hyper-parameters come from
the losses' declarations (:func:`dpokit.losses.declared_params`), choices from their modules.

    >>> cfg = TrainConfig()
    >>> cfg.loss.beta, cfg.optim.batch_size, cfg.model.lora
    (0.1, 4, True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..core.hardware import DEVICES, HOST_MEMORY, PRECISIONS
from ..core.types import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Domain
from ..data.builders.scored import PAIRINGS
from ..losses import declared_params
from ..objectives import F_DIVERGENCES, WPO_FORMS
from .fields import Follows, computes, setting  # noqa: F401 (computes: read from here by others)

_NO_DOMAIN = Domain()
# the text policy's attention backends, batch layouts and samplers (policies/causal_lm/
# attention.py, data/text/collate.py, policies/causal_lm/samplers.py: config may not import
# them; tests/policies/causal_lm/test_{attention,layouts,samplers}.py check the lists agree)
ATTENTION_IMPLS = ("auto", "flex", "flash_varlen", "sdpa_segments", "mask")
LAYOUTS, SAMPLERS = ("auto", "padded", "packed", "prefix_shared"), ("hf", "vllm")
# what the loader asks transformers for (auto: what the family supports: sdpa, else eager)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
                        "flex_attention")


def fields_where(flag: str) -> list[tuple[str, str]]:
    """(section, field) of every field whose ``flag`` (``path``) is set, or whose ``sharded``
    is False for ``flag="unsharded"``.

    >>> ("data", "train_data") in fields_where("path")
    True
    """
    out = []
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            on = (not f.metadata.get("sharded", True)) if flag == "unsharded" \
                else f.metadata.get(flag, False)
            if on:
                out.append((name, f.name))
    return out


@dataclass
class ModelConfig:
    name: str = setting("smollm2", "local folder, hub name, or the embedded default `smollm2`; "
                        "a folder holding a LoRA adapter loads its base and that adapter")
    tokenizer: str | None = setting(None, "tokenizer folder or hub name; default: the model's",
                                          computes=False)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "weights: auto (with LoRA, the frozen base in the training precision's dtype: "
        "bf16 under bf16, fp16 under fp16; else fp32)")
    lora: bool = setting(True, "train a LoRA adapter (false: full fine-tuning)")
    lora_r: int = setting(16, "LoRA rank", AT_LEAST_ONE)
    lora_alpha: int = setting(32, "LoRA scaling numerator", POSITIVE,
                              follows=Follows("lora_r", lambda r: 2 * r, "2 x lora_r"))
    lora_dropout: float = setting(0.0, "LoRA dropout (off when disable_dropout)",
                                  Domain(0.0, 1.0, low_inclusive=True))
    lora_target_modules: list[str] | str | None = setting(
        None, "modules LoRA adapts, by name (e.g. [q_proj, v_proj]) or all-linear; default: "
        "all-linear (every linear layer but the LM head)")
    modules_to_save: list[str] = setting(
        None, "with LoRA: modules trained in full and saved with the adapter (peft's "
        "modules_to_save), e.g. [multi_modal_projector]", factory=list)
    segment_tokens: list[str] = setting(None, "Instructional Segment Embeddings (Wu et al. "
        "2025; text LMs): a learned vector per segment, zero at first, added to each input "
        "embedding; the k-th token begins segment k; empty: off", factory=list, sharded=False)
    segment_reset_tokens: list[str] = setting(None, "tokens that begin segment 0 again (a "
        "turn's start, e.g. <|im_start|>)", factory=list, sharded=False)
    vision_tower: Literal["frozen", "trained"] = setting(
        "frozen", "image-text models: the vision encoder frozen, or trained (LoRA on it too "
        "under lora=true)")
    use_dora: bool = setting(False, "DoRA: LoRA on the direction, a trained magnitude per "
                             "output (Liu et al. 2024)")
    use_rslora: bool = setting(False, "rsLoRA: scale by alpha/sqrt(r), not alpha/r (stable "
                               "at high rank; Kalajdzievski 2023)")
    merge_adapter: bool = setting(False, "final/: the base with the adapter merged in (an "
                                  "ordinary full model), not the adapter alone", sharded=False)
    quantization: Literal["none", "4bit"] = setting(
        "none", "4bit: QLoRA, the frozen base in 4-bit NF4 through bitsandbytes (CUDA GPU only)")
    adapter: str | None = setting(
        None, "start from this LoRA adapter (e.g. an SFT one): it is trained further and a "
        "frozen copy of it is the reference")
    reference: Literal["auto", "copy", "adapter", "adapter_copy", "none"] = setting(
        "auto", "auto: none for reference-free losses, else adapter (LoRA), adapter_copy "
        "(starting adapter) or copy (full)")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward")
    activation_offloading: bool = setting(False, "keep the activations saved for backward in "
                                          "CPU memory (pinned), fetched back in backward")
    disable_dropout: bool = setting(True, "set every dropout to 0, so the policy and reference "
                                    "passes agree (as TRL's default)")
    logprob_impl: Literal["chunked", "plain"] = setting(
        "chunked", "LM head on completion positions in chunks with a recomputing backward; "
        "plain: its twin", computes=False)
    lm_head_chunk_size: int = setting(256, "rows of (chunk x vocab) fp32 logits live at once",
                                      AT_LEAST_ONE, computes=False)
    router_aux_loss_coef: float | None = setting(
        None, "mixture-of-experts: the routers' load-balancing loss weight in the training "
        "loss (default: the model's own; 0: off)", NON_NEGATIVE)
    attn_implementation: Literal[ATTN_IMPLEMENTATIONS] = setting(  # type: ignore[valid-type]
        "auto", "what transformers computes attention with (auto: sdpa where the family "
        "supports it, else eager)", computes=False)
    attention_impl: Literal[ATTENTION_IMPLS] = setting(  # type: ignore[valid-type]
        "auto", "packed / prefix-shared rows: auto (CUDA: flash_varlen with flash-attn, else "
        "flex; CPU / MPS: sdpa_segments), flex (FlexAttention BlockMask), flash_varlen "
        "(flash-attn), sdpa_segments (one SDPA call per segment) or mask (the dense 4-D mask)",
        computes=False)


@dataclass
class DataConfig:
    train_data: str | None = setting(None, "training rows: .jsonl/.json/.csv/.parquet, a "
                                     "save_to_disk folder or a hub dataset name",
                                     computes=False, path=True)
    eval_data: str | None = setting(None, "held-out rows (same formats)", computes=False, path=True)
    train_split: str = setting("train", "split of a datasets dataset", computes=False)
    eval_split: str = setting("test", "split of a datasets dataset for eval_data", computes=False)
    eval_fraction: float = setting(0.0, "when eval_data is not set, hold out this fraction of "
                                   "train_data's prompts, with all their rows (no prompt in "
                                   "both splits)", Domain(0.0, 1.0, low_inclusive=True),
                                   computes=False)
    max_length: int = setting(512, "prompt + completion tokens per sequence", AT_LEAST_ONE)
    max_prompt_length: int = setting(256, "a longer prompt is a bad row", AT_LEAST_ONE,
                                     follows=Follows("max_length", lambda n: max(1, n // 2),
                                                     "half of max_length"))
    chat_template_for_strings: bool = setting(False, "render string rows as a chat turn")
    completion_only_loss: bool = setting(True, "SFT: score completion tokens only (false: the "
                                         "prompt too)")
    on_bad_rows: Literal["error", "skip"] = setting(
        "error", "error: stop at the first bad row; skip: skip, count and report by reason",
        computes=False)
    batch_layout: Literal[LAYOUTS] = setting(  # type: ignore[valid-type]
        "auto", "auto (the fastest layout exact for the model: prefix_shared, else packed, "
        "else padded) | prefix_shared (prompt once per pair) | packed | padded (plain twin); "
        "SFT packs for prefix_shared")
    prove_layout: bool = setting(True, "before training, score a few rows in the layout and "
                                 "alone through the model's own forward; a gap beyond the "
                                 "precision's tolerance stops the run (auto: falls back)",
                                 computes=False)
    max_row_tokens: int | None = setting(None, "packed row cap; default: the longest segment",
                                         AT_LEAST_ONE, computes=False)
    shuffle: bool = setting(True, "seeded order per epoch (false: file order)")
    streaming: bool = setting(False, "read train_data lazily (a .jsonl file, a folder of "
                              ".jsonl shards or a glob), tokenizing each step's rows when it "
                              "comes: bounded memory for data larger than memory")
    shuffle_buffer: int = setting(10_000, "streaming: rows in the shuffling window (0: file "
                                  "order)", NON_NEGATIVE)


def _loss_section() -> type:
    """The loss section: fixed fields, then every hyper-parameter a loss declared."""
    fixed = [
        ("name", str | list[str], setting("sigmoid", "a registered loss (`dpokit losses`), or "
                                          "a list to mix with `loss_weights`")),
        ("loss_weights", list[float] | None, setting(None, "weights of a mixed loss")),
        ("f_divergence", Literal[F_DIVERGENCES], setting(  # type: ignore[valid-type]
            "reverse_kl", "f-DPO: replace the log-ratio u by f'(e^u)")),
        ("f_alpha", float, setting(0.5, "α of the alpha divergence", POSITIVE)),
        ("wpo", Literal[WPO_FORMS], setting(  # type: ignore[valid-type]
            "off", "WPO pair weights: paper (Eq. 2, as TRL) | mean (plain mean log-prob)")),
        ("ld_alpha", float | None, setting(None, "LD-DPO: weight of tokens past the shorter "
                                           "completion", UNIT_INTERVAL)),
        ("sampo", bool, setting(False, "SamPO: each pair's log-probs sum min(|y_w|, |y_l|) "
                                "tokens of each answer, the longer's drawn by optim.seed")),
        ("ref_sync", bool, setting(False, "TR-DPO: move the reference towards the policy")),
        ("ref_sync_every", int, setting(512, "TR-DPO: steps between syncs (TRL's default)",
                                        AT_LEAST_ONE)),
        ("ref_sync_alpha", float, setting(0.6, "TR-DPO: θ_ref <- α·θ + (1-α)·θ_ref (TRL's and "
                                          "the paper's 0.6; 1 = hard copy)",
                                          Domain(0.0, 1.0, high_inclusive=True))),
        ("precompute_ref_logps", bool, setting(True, "run the reference once before training "
                                               "and cache it on disk", computes=False)),
        ("ref_precision", Literal["auto", "fp32", "bf16", "fp16"], setting(
            "auto", "reference forward precision; auto follows the training precision")),
        ("ref_cache_dir", str | None, setting(None, "default: <cache root>/ref_logps",
                                             computes=False)),
    ]
    declared = [(p.name, float, setting(p.default, p.help, p.domain))
                for p in declared_params().values()]
    section = dataclasses.make_dataclass("LossConfig", fixed + declared)
    section.__module__ = __name__
    return section


LossConfig = _loss_section()


@dataclass
class OptimConfig:
    learning_rate: float = setting(5e-6, "AdamW peak learning rate", POSITIVE)
    weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    adam_betas: list[float] = setting(None, "AdamW betas", factory=lambda: [0.9, 0.999])
    adamw_fused: bool = setting(True, "torch's fused AdamW where the parameters allow (not "
                                "FSDP2 / DeepSpeed); false: its per-tensor twin", computes=False)
    lr_scheduler: Literal["linear", "cosine", "constant"] = setting("linear", "after warmup")
    warmup_steps: int = setting(0, "linear warmup steps (wins over warmup_ratio)", NON_NEGATIVE)
    warmup_ratio: float = setting(0.0, "warmup as a fraction of the steps", UNIT_INTERVAL)
    num_epochs: float = setting(1.0, "passes over train_data", POSITIVE)
    max_steps: int | None = setting(None, "optimizer steps; wins over num_epochs", AT_LEAST_ONE)
    batch_size: int = setting(4, "examples (pairs, sequences) per micro-batch per process",
                              AT_LEAST_ONE)
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step", AT_LEAST_ONE)
    max_grad_norm: float | None = setting(1.0, "gradient clipping; null: none", POSITIVE)
    mixed_precision: Literal[PRECISIONS] = setting(  # type: ignore[valid-type]
        "auto", "auto: bf16 autocast where the device computes bf16 natively (CUDA with bf16 "
        "units, a CPU with AMX / AVX512-BF16), fp16 + loss scaling on a CUDA GPU without, else "
        "fp32 (`dpokit env` shows the choice); no / fp32; bf16; fp16 (autocast, dynamic loss "
        "scaling). Loss math, reductions and log-prob sums stay fp32")
    seed: int = setting(0, "seeds the data order, LoRA init and sampling")


@dataclass
class RunConfig:
    COMPUTES: ClassVar[bool] = False  # where and how often to evaluate, save and log

    output_dir: str = setting("outputs/run", "metrics, checkpoints and final/")
    device: Literal[DEVICES] = setting(  # type: ignore[valid-type]
        "auto", "auto (CUDA, then an Apple GPU, then the CPU) | cpu | cuda | mps")
    host_memory: Literal[HOST_MEMORY] = setting(  # type: ignore[valid-type]
        "keep", "keep: on a CPU (glibc) freed memory stays in the heap, not faulted in again "
        "each step (14-21% faster; memory does not shrink after its peak) | system: glibc's")
    eval_every: int | None = setting(None, "steps; null: only at the end", AT_LEAST_ONE)
    eval_batch_size: int = setting(8, "examples per eval batch", AT_LEAST_ONE)
    eval_before: bool = setting(True, "evaluate once before training too, as a baseline for "
                                "the final evaluation")
    eval_prompts: str | None = setting(
        None, "held-out prompts: at each evaluation, sample answers and log their reward, KL to "
        "the reference, length, diversity and win rate (eval/gen/...; sampling as in online)",
        path=True, sharded=False)
    eval_reward: str | None = setting(None, "reward of those samples; default: online.reward")
    eval_samples: int = setting(4, "answers sampled per eval prompt", AT_LEAST_ONE)
    log_every: int = setting(1, "steps between metric rows", AT_LEAST_ONE)
    save_every: int | None = setting(None, "steps between checkpoints; null: none", AT_LEAST_ONE)
    keep_checkpoints: int = setting(2, "newest checkpoints kept", AT_LEAST_ONE)
    resume: bool = setting(False, "continue from the latest checkpoint in output_dir")
    resume_allow_changes: bool = setting(False, "resume even when the data, the config fields "
                                         "that change the computation or the code changed "
                                         "(each difference is warned)")
    overwrite_output_dir: bool = setting(False, "replace another run's checkpoints, final/ and "
                                         "metrics in output_dir")
    log_with: list[str] = setting(None, "trackers through accelerate (tensorboard, wandb, "
                                  "mlflow, aim, comet_ml); those not installed are skipped",
                                  factory=lambda: ["tensorboard"])
    progress_bar: bool = setting(True, "tqdm progress bars")
    push_to_hub: str | None = setting(None, "after training, upload final/ to this hub repo id")


@dataclass
class DistributedConfig:
    COMPUTES: ClassVar[bool] = False  # engines are tested equal (N processes == 1)

    strategy: Literal["ddp", "fsdp", "deepspeed"] = setting(
        "ddp", "engine under torchrun / accelerate launch: ddp (a whole copy per process) | "
        "fsdp (PyTorch FSDP2: weights, gradients and optimizer state sharded per decoder layer) "
        "| deepspeed (DeepSpeed ZeRO: optimizer state and gradients sharded, stage 3 weights too)")
    zero_stage: int = setting(3, "deepspeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + "
                              "weights sharded)", Domain(1.0, 3.0, low_inclusive=True,
                                                         high_inclusive=True))
    deepspeed_config: str | None = setting(
        None, "deepspeed: a DeepSpeed JSON config for what dpokit does not set (offload, "
        "buckets, ...; configs/deepspeed/); batch sizes, clipping and bf16 come from this "
        "config and may be \"auto\" there; default: accelerate launch's deepspeed_config_file")
    fsdp_cpu_offload: bool = setting(False, "fsdp: keep parameters, gradients and optimizer "
                                     "state on the CPU between uses")
    fsdp_reshard_after_forward: bool = setting(
        True, "fsdp: free each layer's gathered weights after forward (less memory, one more "
        "all-gather in backward)")


@dataclass
class OnlineConfig:
    mode: Literal["off", "online", "iterative"] = setting(
        "off", "off: train on train_data's pairs; online: every step, pairs from the policy's "
        "own samples (online DPO); iterative: rounds of sample -> score -> pair -> train, each "
        "round's model the next round's reference", sharded=False)
    prompts: str | None = setting(None, "prompt rows (prompt, optional reference) to sample "
                                  "for; default: train_data", path=True)
    reward: str = setting("vader", "scores samples: module:function, vader, vader_negative, "
                          "minilm (vs the row's reference) or hf:PATH")
    num_samples: int = setting(2, "completions sampled per prompt", Domain(2.0, low_inclusive=True))
    temperature: float = setting(1.0, "sampling temperature", POSITIVE)
    top_p: float = setting(1.0, "nucleus sampling mass", Domain(0.0, 1.0, high_inclusive=True))
    max_new_tokens: int = setting(48, "tokens per sample at most", AT_LEAST_ONE)
    sample_batch_size: int = setting(16, "sequences per generate call", AT_LEAST_ONE,
                                         computes=False)
    sampler: Literal[SAMPLERS] = setting(  # type: ignore[valid-type]
        "hf", "hf: Hugging Face generate (KV cache) | vllm: a vLLM engine on the training GPU, "
        "loaded with the policy's current weights (LoRA merged) before each sampling round "
        "(CUDA only)", computes=False, sharded=False)
    vllm_gpu_memory: float = setting(0.3, "vllm: share of the GPU's memory the engine takes",
                                     Domain(0.0, 1.0, high_inclusive=True), computes=False)
    pairing: Literal[PAIRINGS] = setting(  # type: ignore[valid-type]
        "best_worst", "how scored samples become pairs (best_worst, best_random, all_pairs)")
    pair_margin: float = setting(0.0, "smallest reward difference that makes a pair", NON_NEGATIVE)
    prompts_per_step: int = setting(4, "online: prompts sampled per step per process", AT_LEAST_ONE)
    iterations: int = setting(2, "iterative: rounds", AT_LEAST_ONE)


@dataclass
class DrPOConfig:
    """DrPO (Jiang, Wen and Liu 2026) for one-step image generators."""

    samples_per_prompt: int = setting(8, "K: images sampled per prompt each step",
                                      Domain(2.0, low_inclusive=True))
    num_positive: int = setting(2, "the top-rewarded samples the generator drifts toward",
                                AT_LEAST_ONE)
    num_negative: int = setting(2, "the bottom-rewarded samples it drifts away from", AT_LEAST_ONE)
    drift_radii: list[float] = setting(None, "kernel radii of the preference drift (in units "
                                       "of the mean feature distance)",
                                       factory=lambda: [0.02, 0.05, 0.2])
    reference_radii: list[float] = setting(None, "kernel radii of the reference drift",
                                           factory=lambda: [0.02, 0.05, 0.2])
    reference_weight: float = setting(0.2, "weight of the reference drift (toward the frozen "
                                      "base generator's samples) in the loss", NON_NEGATIVE)
    positive_weight: float = setting(3000.0, "target weight of each positive in both fields "
                                     "(the reference's samples in the reference drift)",
                                     POSITIVE)
    negative_weight: float = setting(3000.0, "target weight of each negative in both fields "
                                     "(the generator's own samples in the reference drift)",
                                     POSITIVE)
    own_samples_negative: bool = setting(True, "the official field: the generator's own "
                                         "samples (weight 1) count among the negatives, so "
                                         "they repel each other; false: they are no target")
    drift_kernel: Literal["laplacian", "rbf"] = setting("laplacian", "the drift kernel")


@dataclass
class GeometryConfig:
    probes: str | None = setting(
        None, "style probe rows (content, style, text), e.g. data/style_probes.eval.jsonl: "
        "Style TDI and trajectory TDI at each evaluation (eval/geometry/...)",
        computes=False, path=True, sharded=False)
    layer: int = setting(-1, "hidden layer of Style TDI and the finite_difference regularizer "
                         "(-1: the last)")
    tdi_sigma: float = setting(0.01, "trajectory TDI input noise, relative to the input "
                               "embeddings' RMS (the identity map scores sigma^2)", POSITIVE,
                               computes=False)
    warn_increase: float = setting(0.2, "warn when Style TDI rises by more than this fraction "
                                   "over its first value", NON_NEGATIVE, computes=False)
    max_probe_length: int = setting(64, "tokens per probe text", AT_LEAST_ONE)
    regularizer: Literal["off", "finite_difference", "matched", "input_matched"] = setting(
        "off", "penalize hidden-state sensitivity to style during training: finite_difference "
        "(distances between style variants / between contents), matched (the paper's matched "
        "penalty: the response to noise shaped like the style changes of the hidden states) or "
        "input_matched (dpokit's: noise shaped like the style changes of the input "
        "embeddings)", sharded=False)
    regularizer_probes: str | None = setting(
        None, "probe rows the regularizer trains on (keep them apart from `probes`), e.g. "
        "data/style_probes.train.jsonl", path=True)
    regularizer_weight: float = setting(1.0, "weight of the penalty in the loss", NON_NEGATIVE)
    regularizer_contents: int = setting(4, "probe contents per step (all their styles run)",
                                        Domain(2.0, low_inclusive=True))
    regularizer_cap: float = setting(0.0, "cap the weighted penalty at this fraction of the "
                                     "step's task loss (the paper: 0.3; 0: no cap)",
                                     NON_NEGATIVE)
    regularizer_layer: int | None = setting(None, "matched: the decoder layer after which the "
                                            "style-shaped noise enters (None: the middle one)")
    regularizer_rank: int = setting(128, "matched: keep the style covariance's top components",
                                    AT_LEAST_ONE)
    regularizer_shrinkage: float = setting(0.1, "matched: shrink the style covariance toward "
                                           "isotropic by this share (of equal trace)",
                                           UNIT_INTERVAL)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig,
    "run": RunConfig, "distributed": DistributedConfig, "online": OnlineConfig,
    "geometry": GeometryConfig, "drpo": DrPOConfig}


@dataclass
class TrainConfig:
    """Every setting of a run, in sections (``cfg.loss.beta``, ``cfg.optim.learning_rate``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # type: ignore[valid-type]
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    drpo: DrPOConfig = field(default_factory=DrPOConfig)
    derived: tuple[str, ...] = field(default=(), compare=False, repr=False)  # what followed

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}
