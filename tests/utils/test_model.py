"""utils/model.py: the model and its optimizer as the run builds them (LoRA+ learning rates, a tokenizer that fits
the embeddings) and its honest parameter count."""
from __future__ import annotations

import pytest

import main_train
from tests.conftest import train_argv
from utils.config import parse_args
from utils.model import apply_peft, build_model, count_parameters
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
