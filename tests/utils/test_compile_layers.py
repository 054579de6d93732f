"""compile_layers: the compiled decoder layers compute the same loss and gradients as the eager ones (CPU inductor)."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import loss_and_grads, packed_batch, tiny_qwen2
from utils.model import apply_peft, compile_layers


def _args(**kw):
    base = dict(train_mode="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None,
                use_dora=False, factored_dora_norm=False, use_rslora=False, init_lora_weights="gaussian",
                compile_layers=False, activation_checkpointing=True, train_new_tokens=False)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("train_mode,use_dora,checkpointing,factored", [
    ("lora", False, True, False), ("full", False, True, False), ("lora", True, False, False),
    ("lora", True, True, False), ("lora", True, True, True)])
def test_compiled_layers_match_eager_loss_and_gradients(train_mode, use_dora, checkpointing, factored):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = apply_peft(tiny_qwen2(), _args(train_mode=train_mode, use_dora=use_dora, factored_dora_norm=factored))
    compiled = compile_layers(copy.deepcopy(eager), _args(compile_layers=True, use_dora=use_dora,
                                                          activation_checkpointing=checkpointing))
    for m in (eager, compiled):
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    for step, lengths in enumerate([[7, 19, 12], [30, 5], [11, 11, 11, 3]]):  # a new total length every step
        batch = packed_batch(step, lengths)
        ref_loss, ref_grads = loss_and_grads(eager, batch)
        loss, grads = loss_and_grads(compiled, batch)
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
        assert grads.keys() == ref_grads.keys() and grads
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled


def test_layers_compile_once_for_every_sequence_length_and_layer():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = compile_layers(apply_peft(tiny_qwen2(), _args()), _args(compile_layers=True))
    model.train()
    for step, lengths in enumerate([[7, 19, 12], [30, 5], [50, 9]]):
        loss_and_grads(model, packed_batch(step, lengths))
    # At most two graphs for every layer and every length: layer 0's input (the frozen embedding's output) does not
    # require grad, the other layers' inputs do. No graph per layer, no graph per sequence length.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2


def _saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward pass."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    return sum(storages.values())


def test_compiled_layers_under_checkpointing_keep_no_more_than_eager_checkpointing():
    """A checkpoint inside the compiled graph lets the partitioner save several activations per layer (3x the eager
    checkpoint's bytes on this model); outside it, the layer keeps its input alone, as eager checkpointing does."""
    torch._dynamo.reset()
    eager = apply_peft(tiny_qwen2(), _args())
    compiled = compile_layers(copy.deepcopy(eager), _args(compile_layers=True))
    batch = packed_batch(0, [40, 24, 60])
    for m in (eager, compiled):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    assert _saved_bytes(compiled, batch) == _saved_bytes(eager, batch)


def test_compiled_layers_keep_state_dict_keys():
    model = tiny_qwen2()
    keys = list(model.state_dict())
    compile_layers(model, _args(compile_layers=True))
    assert list(model.state_dict()) == keys  # checkpoints and save_pretrained see no _orig_mod prefix


def test_compile_off_leaves_model_untouched():
    model = tiny_qwen2()
    compile_layers(model, _args(compile_layers=False))
    assert all(getattr(m, "_compiled_call_impl", None) is None and "forward" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("fused", ["false", "true"])
def test_compiled_qlora_layers_trace_whole_and_train_as_eager(tiny_model, toy_data, tmp_path, fused):
    """bitsandbytes' 4-bit layers trace into the compiled layer without a graph break (its ops are torch custom
    ops), also with fused_lora, and the compiled QLoRA run logs the eager run's losses."""
    import main_train
    from tests.conftest import train_argv
    losses = {}
    for compiled in ("false", "true"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / compiled, "--template_name",
                                             "qwen", "--train_mode", "qlora", "--padding_free", "true",
                                             "--compile_layers", compiled, "--fused_lora", fused))
        losses[compiled] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
