"""The causal-LM room: the policy, its log-prob head, segment attention, model loading, LoRA."""

from .policy import CausalLMPolicy
from .scoring import ld_token_weights

__all__ = ["CausalLMPolicy", "ld_token_weights"]
