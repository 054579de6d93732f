"""utils/model.py: the model and its optimizer as the run builds them (LoRA+ learning rates, a tokenizer that fits
the embeddings) and its honest parameter count."""
from __future__ import annotations

import pytest
import torch
import transformers

import main_train
from tests.conftest import train_argv
from utils.config import parse_args
from train_args.base import TrainArgs
from utils.model import apply_peft, build_model, count_parameters, prepare_quantized
from utils.tokenizer import build_tokenizer


def test_loraplus_gives_b_a_larger_learning_rate(tiny_model, toy_data, tmp_path):
    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                         "--loraplus_lr_ratio", "16", "--max_steps", "1"))
    lrs = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            name = next(n for n, q in trainer.model.named_parameters() if q is p)
            lrs[name] = group["lr"]
    a = {v for k, v in lrs.items() if "lora_A" in k}
    b = {v for k, v in lrs.items() if "lora_B" in k}
    assert len(a) == len(b) == 1 and b.pop() == pytest.approx(16 * a.pop())


def test_tokenizer_larger_than_the_model_is_refused(tiny_model, toy_data, tmp_path):
    """A separate tokenizer whose vocabulary exceeds the model's embeddings is a mismatch, not a resize."""
    with pytest.raises(ValueError, match="do not belong together"):
        main_train.main(train_argv(tiny_model("phi3"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                   "--tokenizer_name_or_path", str(tiny_model("qwen"))))


def test_qlora_counts_four_bit_weights_as_the_parameters_they_hold(tiny_model, toy_data, tmp_path):
    """bitsandbytes packs several 4-bit values into each stored element: counted by numel(), QLoRA's model looked
    several times smaller than the same model under LoRA."""
    counts = {}
    for mode in ("lora", "qlora"):
        args = parse_args(train_argv(tiny_model("qwen"), toy_data, tmp_path / mode, "--template_name", "qwen",
                                     "--train_mode", mode))
        tokenizer, _, _ = build_tokenizer(args)
        counts[mode] = count_parameters(apply_peft(build_model(args, vocab_size=len(tokenizer)), args))
    assert counts["qlora"] == counts["lora"]


@pytest.mark.parametrize("dtype,kept", [("bfloat16", torch.bfloat16), ("float16", torch.float32)])
def test_qlora_keeps_a_bf16_base_in_bf16(dtype, kept):
    """QLoRA's frozen unquantized weights (embeddings, head, norms) stay bf16 (peft's preparation would cast them to
    fp32: 2.2 GB more on a 7B shape); an fp16 base is still cast, as peft does. Everything is frozen either way."""
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    args = TrainArgs(output_dir="unused", use_cpu=True, torch_dtype=dtype, train_mode="qlora", report_to="none")
    model = prepare_quantized(model, args)
    assert {p.dtype for p in model.parameters()} == {kept}
    assert not any(p.requires_grad for p in model.parameters())
