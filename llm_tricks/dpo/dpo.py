"""DPO and SimPO losses from sequence log-probabilities, in plain PyTorch.

DPO (Rafailov et al. 2023, arXiv:2305.18290). RLHF maximises reward - beta * KL(pi || pi_ref); its
optimum is pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta). Solve for the reward,
r = beta * log(pi / pi_ref) + beta * log Z(x), plug it into the Bradley-Terry preference model
P(y_w > y_l) = sigmoid(r_w - r_l), and Z(x) cancels:

    loss = -log sigmoid( beta * [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ] )

A classification loss on preference pairs: no reward model, no sampling. log pi(y) is the *sum* of
the completion's token log-probs. beta sets how far the policy may drift from the reference.

SimPO (Meng, Xia & Chen 2024, arXiv:2405.14734) drops the reference model: the implicit reward is
the *average* token log-prob (so long answers are not favoured just for having more tokens), and a
margin gamma is required between the winner and the loser:

    loss = -log sigmoid( beta * avg_log pi(y_w) - beta * avg_log pi(y_l) - gamma )

tests/llm_tricks/test_dpo.py checks dpo_loss against a real trl 1.16 DPOTrainer (whose loss is inline
in `_compute_loss`, not a separate function) and simpo_loss against trl's CPOTrainer.cpo_loss.
"""

import torch
import torch.nn.functional as F


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor, average=False):
    """log pi(completion | prompt) per sequence from a causal LM's logits.

    Position t predicts token t + 1, so logits are shifted left against the ids. Prompt and padding
    tokens (completion_mask == 0) do not count. `average=True` divides by the number of completion tokens.
    """
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logps.dtype)
    token_logps = torch.gather(logps, 2, targets.unsqueeze(-1)).squeeze(-1) * mask
    total = token_logps.sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1) if average else total


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
):
    """Per-pair DPO (sigmoid) loss and the implicit rewards beta * log(pi / pi_ref) used for logging."""
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


def simpo_loss(policy_chosen_avg: torch.Tensor, policy_rejected_avg: torch.Tensor, beta: float = 2.0, gamma=0.5):
    """Per-pair SimPO loss from *length-averaged* log-probs; no reference model."""
    return -F.logsigmoid(beta * (policy_chosen_avg - policy_rejected_avg) - gamma)
