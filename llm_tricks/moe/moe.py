"""A sparse mixture-of-experts MLP with top-k routing and the Switch load-balancing loss.

Each token picks k of E expert MLPs (Shazeer et al. 2017; Mixtral, Jiang et al. 2024, arXiv:2401.04088):

    p = softmax(W_router h)                 router probabilities over E experts
    S = top-k indices of p                  the chosen experts
    y = sum_{e in S} (p_e / sum_{j in S} p_j) * Expert_e(h)      (weights renormalised over the k picks)

Only k experts run per token, so compute grows with k while parameters grow with E. The risk is
collapse: the router sends most tokens to a few experts, which then get all the gradient. The
auxiliary loss of the Switch Transformer (Fedus et al. 2021, arXiv:2101.03961, eq. 4-6) pushes back:

    f_e = share of the routing slots given to expert e      (from the hard top-k choice, no gradient)
    P_e = mean router probability of expert e               (differentiable)
    aux = E * sum_e f_e * P_e

The gradient flows through P only: lowering P_e for the overloaded experts. With top-k routing
the f_e sum to k, so a perfectly balanced router gives aux = k (1 for Switch's top-1), and any
imbalance gives more.

`MoEBlock` matches `transformers`' MixtralSparseMoeBlock, and `load_balancing_loss` matches
`transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func` (the same function is used by
Qwen2-MoE), tested in tests/llm_tricks/test_moe.py.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Expert(nn.Module):
    """A SwiGLU MLP, the expert of Mixtral / Qwen-MoE: down(silu(gate(h)) * up(h))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(h)) * self.up(h))


class MoEBlock(nn.Module):
    """Router + E experts. Returns (output, router_logits); collect the logits of all layers for the aux loss."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(hidden, intermediate) for _ in range(num_experts))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        h = hidden_states.reshape(-1, shape[-1])  # (tokens, hidden): routing is per token
        router_logits = self.router(h)  # (tokens, E)
        probs = F.softmax(router_logits.float(), dim=-1)  # softmax in fp32, as Mixtral does
        top_p, top_idx = torch.topk(probs, self.top_k, dim=-1)  # (tokens, k)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)  # renormalise over the chosen experts
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.where(top_idx == e)  # which tokens chose e, and in which of their k slots
            if token_idx.numel() == 0:
                continue  # an expert nobody picked costs nothing: this is the "sparse" in sparse MoE
            weight = top_p[token_idx, slot].unsqueeze(1).to(h.dtype)
            out.index_add_(0, token_idx, expert(h[token_idx]) * weight)
        return out.view(shape), router_logits


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...] | list[torch.Tensor],
    num_experts: int,
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch aux loss over all MoE layers at once.

    router_logits: one (batch * seq, E) tensor per layer. As in transformers, the layers are pooled:
    f and P are averaged over every (layer, token) pair, then multiplied, which is not the mean of
    per-layer losses. attention_mask (batch, seq) removes padding tokens from both averages.
    """
    logits = torch.cat(list(router_logits), dim=0)  # (layers * tokens, E)
    probs = F.softmax(logits.float(), dim=-1)
    _, chosen = torch.topk(probs, top_k, dim=-1)
    slots = F.one_hot(chosen, num_experts).sum(dim=1).float()  # (rows, E): 1 where e is among the k picks
    if attention_mask is None:
        weight = torch.ones(logits.shape[0], device=logits.device)
    else:  # the same (batch * seq) mask for every layer
        weight = attention_mask.reshape(-1).float().repeat(len(router_logits)).to(logits.device)
    f = (slots * weight[:, None]).sum(dim=0) / weight.sum()  # sums to top_k
    P = (probs * weight[:, None]).sum(dim=0) / weight.sum()  # sums to 1
    return num_experts * torch.sum(f * P)
