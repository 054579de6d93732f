"""LoRA on Etude through PEFT: the standard projection names make target_modules="all-linear" work."""

import torch

from etude_model import EtudeForCausalLM


def test_lora_trains_only_adapters(make_tiny_config):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = EtudeForCausalLM(make_tiny_config("etude-tiny"))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    adapted = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # not lm_head
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    x = torch.randint(4, 320, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses

    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
             for k, v in model.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before), "a base weight changed"
