"""Named model sizes. `make_config("etude-tiny", num_hidden_layers=2)` returns an EtudeConfig.

`etude-v0.1` is the seed model exactly as it was (GPT-2 recipe); every other preset is the
modern recipe (RoPE, RMSNorm, SwiGLU, grouped-query attention, tied embeddings). Parameter
counts are in etude_model/README.md (computed with `count_parameters`).
"""

from __future__ import annotations

from .modeling_etude import EtudeConfig

# The 2019 recipe of the seed "Etude LLM v0.1" (nanoGPT-style GPTConfig).
_GPT2_RECIPE = dict(position_embedding_type="learned", norm_type="layernorm", mlp_type="gelu",
                    tie_word_embeddings=False, bias=True, qk_norm=False)
# The 2024 recipe (Llama / Qwen family).
_MODERN_RECIPE = dict(position_embedding_type="rope", norm_type="rmsnorm", mlp_type="swiglu",
                      tie_word_embeddings=True, bias=False, qk_norm=False)

PRESETS: dict[str, dict] = {
    # The seed: vocab_size 50257 = tiktoken's GPT-2 encoding, no room for chat tokens.
    "etude-v0.1": dict(_GPT2_RECIPE, vocab_size=50257, max_position_embeddings=512, num_hidden_layers=6,
                       num_attention_heads=12, num_key_value_heads=12, hidden_size=768),
    # Runs on a laptop CPU: the 50k x 256 tied embedding is most of it.
    "etude-tiny": dict(_MODERN_RECIPE, max_position_embeddings=256, num_hidden_layers=6, hidden_size=256,
                       num_attention_heads=8, num_key_value_heads=4, intermediate_size=704),
    "etude-small": dict(_MODERN_RECIPE, max_position_embeddings=512, num_hidden_layers=8, hidden_size=512,
                        num_attention_heads=8, num_key_value_heads=4, intermediate_size=1408),
    # GPT-2 124M shape (12 x 768, 12 heads, 1024 context) with the modern recipe.
    "etude-124m": dict(_MODERN_RECIPE, max_position_embeddings=1024, num_hidden_layers=12, hidden_size=768,
                       num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048),
    # GPT-2 medium shape (24 x 1024, 16 heads), QK-norm on for stability at this depth.
    "etude-350m": dict(_MODERN_RECIPE, max_position_embeddings=1024, num_hidden_layers=24, hidden_size=1024,
                       num_attention_heads=16, num_key_value_heads=8, intermediate_size=2816, qk_norm=True),
    # Mixture of experts on the tiny trunk: 8 experts, 2 active per token.
    "etude-tiny-moe": dict(_MODERN_RECIPE, max_position_embeddings=256, num_hidden_layers=6, hidden_size=256,
                           num_attention_heads=8, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                           moe_intermediate_size=352, router_aux_loss_coef=0.01),
}


def make_config(preset: str, **overrides) -> EtudeConfig:
    """EtudeConfig for a named preset; keyword overrides win (e.g. vocab_size, num_hidden_layers)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return EtudeConfig(**{**PRESETS[preset], **overrides})


def count_parameters(config: EtudeConfig) -> dict[str, int]:
    """Parameter counts without building the model (uses the meta device: no memory, no time).
    `total` counts a tied embedding once; `non_embedding` leaves out token/position embeddings and
    an untied head (the convention of the scaling-law papers); `active` is per token for MoE."""
    import torch

    from .modeling_etude import EtudeForCausalLM

    with torch.device("meta"):
        model = EtudeForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel()
    if model.model.embed_positions is not None:
        emb += model.model.embed_positions.weight.numel()
    if not config.tie_word_embeddings:
        emb += model.lm_head.weight.numel()
    active = total
    if config.num_experts:
        per_expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
        active -= config.num_hidden_layers * per_expert * (config.num_experts - config.num_experts_per_tok)
    return {"total": total, "non_embedding": total - emb, "active": active}
