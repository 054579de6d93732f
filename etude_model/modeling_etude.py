"""Etude: the project's own small GPT, in one readable file.

One decoder-only transformer with a few switches, so the same code covers the
2019-style seed model (Etude v0.1: learned positions, LayerNorm, GELU MLP,
untied head) and a 2024-style model (RoPE, RMSNorm, SwiGLU, grouped-query
attention, tied embeddings, optional QK-norm, optional mixture of experts).

It subclasses the Hugging Face base classes on purpose: the learner gets
`save_pretrained`/`from_pretrained`, `generate()` with a KV cache, gradient
checkpointing, the `Trainer` and PEFT/LoRA for free, and the SFT/DPO code of the
rest of the project can treat Etude like any other causal LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.utils import ModelOutput


class EtudeConfig(PretrainedConfig):
    """All the knobs of Etude. Field names follow Hugging Face (so generic tools
    find them); the nanoGPT names (n_embd, n_layer, n_head, block_size) work too,
    through `attribute_map`. Presets live in `etude_model/presets.py`."""

    model_type = "etude"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                     "n_kv_head": "num_key_value_heads", "block_size": "max_position_embeddings"}

    vocab_size: int = 50304               # GPT-2 BPE + 3 chat/pad tokens, padded to a multiple of 64
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None  # None -> same as heads (plain multi-head attention)
    intermediate_size: int | None = None    # None -> 4*d for GELU, ~8/3*d (multiple of 64) for SwiGLU
    max_position_embeddings: int = 1024     # block_size: the longest context trained / supported
    position_embedding_type: str = "rope"   # "rope" | "learned"
    norm_type: str = "rmsnorm"              # "rmsnorm" | "layernorm"
    mlp_type: str = "swiglu"                # "swiglu" | "gelu"
    qk_norm: bool = False                   # RMSNorm on q and k per head (stabilises bigger learning rates)
    bias: bool = False                      # biases in Linear layers and LayerNorm (GPT-2 had them)
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    num_experts: int = 0                    # 0 -> dense MLP; >0 -> top-k routed SwiGLU experts in every layer
    num_experts_per_tok: int = 2
    moe_intermediate_size: int | None = None
    router_aux_loss_coef: float = 0.01      # weight of the load-balancing loss added to the LM loss
    training_stage: str = "pretrain"        # "pretrain" | "sft": recorded in checkpoints
    # Under autocast the residual stream is fp32 (the embeddings are fp32 parameters), as in nanoGPT. True: it runs
    # in the autocast dtype (bf16), as llm.c's does: half the memory traffic of the residual adds and the norms,
    # whose statistics stay fp32 (the throughput it buys: bench/README.md, bf16_residual). No effect without autocast.
    autocast_residual: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 50259
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 50256

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            d = self.hidden_size
            self.intermediate_size = 4 * d if self.mlp_type == "gelu" else 64 * math.ceil(8 * d / 3 / 64)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        super().__post_init__(**kwargs)
        checks = {
            "hidden_size must be divisible by num_attention_heads": self.hidden_size % self.num_attention_heads == 0,
            "num_attention_heads must be divisible by num_key_value_heads":
                self.num_attention_heads % self.num_key_value_heads == 0,
            "position_embedding_type must be 'rope' or 'learned'": self.position_embedding_type in ("rope", "learned"),
            "norm_type must be 'rmsnorm' or 'layernorm'": self.norm_type in ("rmsnorm", "layernorm"),
            "mlp_type must be 'swiglu' or 'gelu'": self.mlp_type in ("swiglu", "gelu"),
            "training_stage must be 'pretrain' or 'sft'": self.training_stage in ("pretrain", "sft"),
            "num_experts_per_tok must be <= num_experts": self.num_experts == 0
                or self.num_experts_per_tok <= self.num_experts,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"EtudeConfig: {message}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# --------------------------------------------------------------------------- building blocks


class EtudeRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): LayerNorm without the mean and the bias.
    Computed in float32 because the mean of squares overflows/underflows in bf16."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)  # same dtype out as in (bf16 stays bf16)


def make_norm(config: EtudeConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.hidden_size
    if config.norm_type == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)
    return EtudeRMSNorm(dim, eps=config.norm_eps)


class EtudeRotaryEmbedding(nn.Module):
    """RoPE (Su et al. 2021): rotate each (q, k) channel pair by an angle proportional
    to the position, so q.k depends only on the distance between tokens."""

    def __init__(self, config: EtudeConfig):
        super().__init__()
        self.head_dim, self.theta = config.head_dim, config.rope_theta

    @torch.no_grad()
    def forward(self, x, position_ids):  # position_ids: (B, T) -> cos, sin: (B, T, head_dim)
        # Frequencies are recomputed in float32 each call (head_dim / 2 numbers): a buffer would be
        # rounded to bf16 by model.to(torch.bfloat16), which garbles the angles of far positions.
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=x.device) / self.head_dim
        freqs = position_ids[:, :, None].float() * (1.0 / self.theta ** exponent)[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):  # q, k: (B, H, T, hd); cos, sin: (B, T, hd)
    cos, sin = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class EtudeAttention(nn.Module):
    """Causal self-attention through torch's fused SDPA kernel (FlashAttention on GPU).
    Grouped-query attention: `num_key_value_heads` k/v heads are shared by groups of q heads,
    which shrinks the KV cache by num_heads / num_kv_heads."""

    def __init__(self, config: EtudeConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d, b = config.hidden_size, config.bias
        self.q_proj = nn.Linear(d, self.n_head * self.hd, bias=b)
        self.k_proj = nn.Linear(d, self.n_kv * self.hd, bias=b)
        self.v_proj = nn.Linear(d, self.n_kv * self.hd, bias=b)
        self.o_proj = nn.Linear(self.n_head * self.hd, d, bias=b)
        self.o_proj._residual_proj = True  # scaled init, see EtudePreTrainedModel._init_weights
        self.q_norm = EtudeRMSNorm(self.hd, config.norm_eps) if config.qk_norm else None
        self.k_norm = EtudeRMSNorm(self.hd, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, position_embeddings=None, past_key_values: Cache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if position_embeddings is not None:  # RoPE; learned positions were already added to x
            q, k = apply_rotary(q, k, *position_embeddings)
        if past_key_values is not None:  # append this step's k/v, get back the whole history
            k, v = past_key_values.update(k, v, self.layer_idx)
        if self.n_kv != self.n_head:  # GQA: each k/v head serves n_head // n_kv query heads
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        # Without an explicit mask SDPA may use its built-in causal mask, which is only right when
        # queries and keys cover the same positions (no cache history).
        is_causal = attn_mask is None and T > 1 and k.shape[2] == T
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class EtudeMLP(nn.Module):
    """GELU MLP (GPT-2: up, GELU, down) or SwiGLU (Shazeer 2020: down(silu(gate) * up)).
    SwiGLU has three matrices, so its hidden size is ~8/3*d instead of 4*d for the same parameters."""

    def __init__(self, config: EtudeConfig, intermediate_size: int | None = None, mlp_type: str | None = None):
        super().__init__()
        d, h, b = config.hidden_size, intermediate_size or config.intermediate_size, config.bias
        self.mlp_type = mlp_type or config.mlp_type
        self.gate_proj = nn.Linear(d, h, bias=b) if self.mlp_type == "swiglu" else None
        self.up_proj = nn.Linear(d, h, bias=b)
        self.down_proj = nn.Linear(h, d, bias=b)
        self.down_proj._residual_proj = True

    def forward(self, x):
        if self.gate_proj is None:
            return self.down_proj(F.gelu(self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EtudeMoE(nn.Module):
    """Mixture of experts (Switch / Mixtral style): a router picks the top-k SwiGLU experts
    per token and mixes their outputs with the renormalised router probabilities.

    The load-balancing loss is num_experts * sum_i(f_i * P_i), where f_i is the fraction of
    the (token, slot) assignments routed to expert i and P_i the mean router probability of
    expert i. It is 1.0 when routing is perfectly uniform and grows when a few experts take
    everything; only P_i carries a gradient. (Padding tokens are counted too: simpler, and
    harmless for packed pretraining.)"""

    def __init__(self, config: EtudeConfig):
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            EtudeMLP(config, config.moe_intermediate_size, "swiglu") for _ in range(self.num_experts))

    def forward(self, x):
        B, T, D = x.shape
        x = x.reshape(-1, D)
        probs = F.softmax(self.router(x).float(), dim=-1)                 # (N, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)                     # (N, k)
        top_p = (top_p / top_p.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):  # a loop over experts: slow but obvious
            token_idx, slot = torch.where(top_i == e)
            if token_idx.numel() > 0:
                out.index_add_(0, token_idx, expert(x[token_idx]) * top_p[token_idx, slot, None])
        routed = F.one_hot(top_i, self.num_experts).float().mean(dim=(0, 1))  # f_i, sums to 1
        aux_loss = self.num_experts * torch.sum(routed * probs.mean(dim=0))
        return out.view(B, T, D), aux_loss


class EtudeDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x += attn(norm(x)); x += mlp(norm(x)).
    GradientCheckpointingLayer re-runs this forward in backward when checkpointing is on."""

    def __init__(self, config: EtudeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = EtudeAttention(config, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = EtudeMoE(config) if config.num_experts > 0 else EtudeMLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states, attn_mask=None, position_embeddings=None, past_key_values=None):
        h = hidden_states + self.resid_dropout(
            self.self_attn(self.input_layernorm(hidden_states), attn_mask, position_embeddings, past_key_values))
        out = self.mlp(self.post_attention_layernorm(h))
        out, aux_loss = out if isinstance(out, tuple) else (out, None)
        return h + self.resid_dropout(out), aux_loss


def build_attention_mask(attention_mask, q_len: int, past_len: int, device):
    """Boolean SDPA mask (B, 1, q_len, past_len + q_len), True = may attend, or None when
    SDPA's own causal flag (or no mask at all, for one new token) is enough.

    attention_mask is the usual 2-D padding mask over past + current tokens (1 = real token).
    Left padding is what batched generation needs; the padded query rows would have nothing
    to attend to (NaN), so every query may always see its own position."""
    kv_len = past_len + q_len
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None and (past_len == 0 or q_len == 1):
        return None
    q_pos = torch.arange(past_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]                                  # (1, 1, q, kv)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, -kv_len:].bool().to(device)
        mask = mask | (k_pos == q_pos)[None, None]
    return mask


# --------------------------------------------------------------------------- the models


@dataclass
class EtudeModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, averaged over layers


class EtudePreTrainedModel(PreTrainedModel):
    config_class = EtudeConfig
    config: EtudeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EtudeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2 / nanoGPT init: N(0, 0.02) everywhere, and the two projections that write into the
        residual stream (o_proj, down_proj) scaled by 1/sqrt(2 * n_layer) so the residual stream's
        variance does not grow with depth. `transformers.initialization` functions skip weights that
        were just loaded from a checkpoint."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "_residual_proj", False):
                std = std / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, EtudeRMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class EtudeModel(EtudePreTrainedModel):
    """The transformer trunk: embeddings, N decoder layers, final norm (no LM head)."""

    def __init__(self, config: EtudeConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                if config.position_embedding_type == "learned" else None)
        self.rotary_emb = EtudeRotaryEmbedding(config) if config.position_embedding_type == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EtudeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, **kwargs) -> EtudeModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if not use_cache:
            past_key_values = None
        B, T, _ = inputs_embeds.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        # The last position: known on the host for our own position ids. Reading the caller's ids
        # waits for the GPU (and would split a compiled graph), so those are checked in eager mode only.
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=inputs_embeds.device)[None].expand(B, T)
            last = past_len + T - 1
        else:
            last = None if torch.compiler.is_compiling() else int(position_ids.max())

        h, rope = inputs_embeds, None
        if self.embed_positions is not None:
            if last is not None and last >= self.config.max_position_embeddings:
                raise ValueError(f"Sequence position {last} is past the learned position table "
                                 f"(max_position_embeddings={self.config.max_position_embeddings})")
            h = h + self.embed_positions(position_ids)
        else:
            rope = self.rotary_emb(h, position_ids)
        if self.config.autocast_residual and torch.is_autocast_enabled(h.device.type):
            h = h.to(torch.get_autocast_dtype(h.device.type))
        h = self.drop(h)
        mask = build_attention_mask(attention_mask, T, past_len, h.device)

        all_hidden, aux_losses = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(h)
            h, aux = layer(h, attn_mask=mask, position_embeddings=rope, past_key_values=past_key_values)
            if aux is not None:
                aux_losses.append(aux)
        h = self.norm(h)
        if output_hidden_states:
            all_hidden.append(h)
        return EtudeModelOutput(
            last_hidden_state=h, past_key_values=past_key_values,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            aux_loss=torch.stack(aux_losses).mean() if aux_losses else None)


class EtudeForCausalLM(EtudePreTrainedModel, GenerationMixin):
    """EtudeModel + a linear LM head. With `tie_word_embeddings` the head reuses the input
    embedding matrix (GPT-2 does; with a 50k vocab that is most of a small model's parameters)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # The Trainer passes `num_items_in_batch` only to models that accept loss kwargs.
    accepts_loss_kwargs = True

    def __init__(self, config: EtudeConfig):
        super().__init__(config)
        self.model = EtudeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # get/set_input_embeddings come from PreTrainedModel, which asks self.model (base_model_prefix).
    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None,
                logits_to_keep: int = 0, num_items_in_batch=None,
                **kwargs) -> MoeCausalLMOutputWithPast:
        """labels follow the HF convention: same shape as input_ids, NOT shifted (we shift here),
        -100 = ignore. With `num_items_in_batch` (the Trainer passes it under gradient
        accumulation) the loss is sum(token losses) / num_items_in_batch, so micro-batches
        with different numbers of supervised tokens are weighted per token, not per batch."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_hidden_states=output_hidden_states)
        h = out.last_hidden_state
        if logits_to_keep:  # generate() only needs the last position's logits
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)

        loss, aux_loss = None, out.aux_loss
        # shift_labels stays out of the signature: the Trainer treats every `*labels` parameter as required for eval
        shift_labels = kwargs.pop("shift_labels", None)
        if labels is not None or shift_labels is not None:
            if shift_labels is None:  # position t predicts token t+1
                shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]
            shift_labels = shift_labels.to(logits.device)
            reduction = "mean" if num_items_in_batch is None else "sum"
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift_labels.reshape(-1),
                                   ignore_index=-100, reduction=reduction)
            if num_items_in_batch is not None:
                loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
            if aux_loss is not None and self.config.router_aux_loss_coef:
                loss = loss + self.config.router_aux_loss_coef * aux_loss
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits,
                                         past_key_values=out.past_key_values, hidden_states=out.hidden_states)
