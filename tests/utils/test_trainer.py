"""DojoTrainer's shortcuts (cached FLOP count, clipping over trainable parameters only) change no result; the loss
is normalised over the whole accumulation window; a non-finite loss stops the run."""
from __future__ import annotations


import pytest
import torch
import transformers
from transformers import Trainer

import main_train
from tests.conftest import final_loss, train_argv, trainable_params, write_jsonl
from train_args.base import TrainArgs
from utils.model import apply_peft
from utils.collators import PaddingFreeCollator
from utils.trainer import DojoTrainer


def _run(trainer_cls, tmp_path):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    args = TrainArgs(output_dir=str(tmp_path / trainer_cls.__name__), use_cpu=True, bf16=False, max_steps=3,
                     per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                     max_grad_norm=0.05, logging_steps=1, report_to="none", save_strategy="no", lora_rank=4,
                     lora_dropout=0.0, init_lora_weights="gaussian", disable_tqdm=True)
    model = apply_peft(transformers.Qwen2ForCausalLM(config), args)
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": (ids := torch.randint(3, 128, (n,), generator=g).tolist()), "labels": ids}
            for n in (9, 14, 5, 11, 8, 13)]
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=PaddingFreeCollator())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "grad_norm" in h]
    weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    return logs, weights, trainer.state.total_flos


def test_dojo_trainer_matches_hf_trainer(tmp_path):
    hf_logs, hf_weights, hf_flos = _run(Trainer, tmp_path)
    logs, weights, flos = _run(DojoTrainer, tmp_path)
    assert [h["grad_norm"] for h in logs] == [h["grad_norm"] for h in hf_logs]
    assert hf_logs[0]["grad_norm"] > 0.05  # clipping was active, so clipping over fewer tensors was exercised
    assert flos == hf_flos
    for name, w in hf_weights.items():
        torch.testing.assert_close(weights[name], w, atol=0, rtol=0)


def _evaluate(tmp_path, chunked_loss: bool, max_tokens: int) -> tuple[float, int]:
    """(eval_loss, how many times the output head computed full-vocabulary logits)"""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    args = TrainArgs(output_dir=str(tmp_path / f"eval{chunked_loss}{max_tokens}"), use_cpu=True, bf16=False,
                     per_device_eval_batch_size=3, report_to="none", padding_free=True, chunked_loss=chunked_loss,
                     micro_batch_max_tokens=max_tokens, disable_tqdm=True)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (9, 14, 5, 11, 8, 13, 7):
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    model, logits = transformers.Qwen2ForCausalLM(config), []
    model.lm_head.register_forward_hook(lambda module, args, out: logits.append(out.shape))
    trainer = DojoTrainer(model=model, args=args, eval_dataset=rows,
                          data_collator=PaddingFreeCollator(max_tokens=max_tokens))
    return trainer.evaluate()["eval_loss"], len(logits)


def test_chunked_evaluation_loss_in_pieces_matches_the_trainers_own(tmp_path):
    """Under chunked_loss, evaluation skips the full-vocabulary logits and runs the pieces of a batch (the peak of
    a GPU run was its evaluation): the same mean loss as the Trainer's own evaluation of whole batches."""
    plain, plain_logits = _evaluate(tmp_path, chunked_loss=False, max_tokens=0)
    assert plain_logits == 3  # 7 samples in batches of 3
    for max_tokens in (0, 16):  # whole batches; pieces of at most 16 tokens
        loss, logits = _evaluate(tmp_path, chunked_loss=True, max_tokens=max_tokens)
        assert logits == 0 and loss == pytest.approx(plain, rel=1e-5)


def _gemma2(softcap):
    torch.manual_seed(0)
    config = transformers.Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
                                       final_logit_softcapping=softcap, tie_word_embeddings=False)
    model = transformers.Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # logits of a few units, where a cap of 2 bends them
    return model


def test_chunked_loss_gives_gemma2_its_soft_capped_loss(tmp_path):
    """Gemma 2 soft-caps its logits (final_logit_softcapping): the chunked loss is the model's own loss."""
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    losses = []
    for chunked in (False, True):
        args = TrainArgs(output_dir=str(tmp_path / str(chunked)), use_cpu=True, bf16=False, report_to="none",
                         chunked_loss=chunked)
        model = _gemma2(softcap=2.0)
        losses.append(DojoTrainer(model=model, args=args).compute_loss(model, dict(batch)).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert _gemma2(softcap=None)(**batch).loss.item() != pytest.approx(losses[0], rel=1e-2)  # the cap mattered


def test_chunked_loss_refuses_a_model_that_transforms_its_logits(tmp_path):
    """Cohere scales its logits (logit_scale): the chunked loss would not be the model's, so the run stops."""
    from utils.trainer import build_trainer
    config = transformers.CohereConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    args = TrainArgs(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", chunked_loss=True)
    with pytest.raises(ValueError, match="chunked_loss: reproduces .* 'cohere' is not among them"):
        build_trainer(transformers.CohereForCausalLM(config), args, None, [], None)


def test_batch_times_accumulation_is_invariant(tiny_model, tmp_path):
    """4 x 1 and 2 x 2 give the same step: the loss is normalised by supervised tokens over the whole window,
    not averaged per micro-batch (samples here have very different numbers of supervised tokens)."""
    records = [{"instruction": f"q{i}", "output": "word " * (1 + 7 * (i % 3))} for i in range(8)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    model_dir = tiny_model("qwen")
    runs = []
    for batch, accum in ((4, 1), (2, 2)):
        runs.append(main_train.main(train_argv(
            model_dir, data, tmp_path / f"o{batch}", "--template_name", "qwen", "--train_mode", "full",
            "--max_steps", "2", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accum), "--seed", "1", "--data_seed", "1")))
    a, b = trainable_params(runs[0]), trainable_params(runs[1])
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    assert abs(final_loss(runs[0]) - final_loss(runs[1])) < 1e-4


def test_non_finite_loss_stops_the_run(tiny_model, toy_data, tmp_path):
    from utils.trainer import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                   "--train_mode", "full", "--learning_rate", "1e30", "--max_grad_norm", "0"))



@pytest.mark.parametrize("budget,checkpointed", [("0", True), ("80", False)])
def test_qlora_checkpoints_its_layers_as_the_plan_says(tiny_model, toy_data, tmp_path, budget, checkpointed):
    """QLoRA's layers are checkpointed by the Trainer from the run's plan, as LoRA's: by default every layer, and none
    when memory_budget_gb chose none (the 4-bit preparation does not turn it on behind the plan's back)."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen",
                                         "--train_mode", "qlora", "--padding_free", "true", "--max_steps", "1",
                                         "--memory_budget_gb", budget))
    layers = [m for m in trainer.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing is checkpointed for layer in layers)
    assert trainer.args.activation_checkpointing is checkpointed
