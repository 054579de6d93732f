"""offload_checkpoints: the checkpointed layers' inputs wait in host memory; the training is the same."""
from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers.modeling_layers import GradientCheckpointingLayer

import utils.offload as offload
from tests.conftest import loss_and_grads, packed_batch, tiny_qwen2, train_argv
from train_args.base import TrainArgs
from utils.offload import offload_checkpoint_inputs


def _checkpointed(every_n_layers: int = 1, layers: int = 2):
    model = tiny_qwen2(layers).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                          every_n_layers=every_n_layers)
    return model


def test_offload_wraps_the_checkpointing_layers_and_moves_their_inputs_alone(monkeypatch):
    """What the hooks see is each checkpointed layer's input (one hidden-wide tensor per layer), nothing saved inside
    a layer; every_n_layers 2 leaves the layers that keep their activations alone."""
    seen = []
    to_host = offload._to_host
    monkeypatch.setattr(offload, "_to_host", lambda t: seen.append(tuple(t.shape)) or to_host(t))
    model = _checkpointed(every_n_layers=2, layers=4)
    assert offload_checkpoint_inputs(model) == 2
    assert offload_checkpoint_inputs(model) == 2  # wrapping twice does not offload twice
    batch = packed_batch()
    model(**batch).loss.backward()
    tokens = batch["input_ids"].shape[1]
    assert seen == [(1, tokens, model.config.hidden_size)] * 2


@pytest.mark.parametrize("copied", [False, True], ids=["in_place", "copied"])
def test_offloaded_checkpointing_trains_as_plain_checkpointing(copied, monkeypatch):
    """copied: the saved input comes back as a fresh tensor without autograd history, as the host copy does on a
    GPU (on a CPU the hooks leave it in place): the recompute does not need the original tensor."""
    if copied:
        monkeypatch.setattr(offload, "_to_host", lambda t: (t.device, t.detach().clone()))
    plain, offloaded = _checkpointed(), _checkpointed()
    offloaded.load_state_dict(plain.state_dict())
    offload_checkpoint_inputs(offloaded)
    for step in range(2):
        ref_loss, ref_grads = loss_and_grads(plain, packed_batch(step), seed=step)
        loss, grads = loss_and_grads(offloaded, packed_batch(step), seed=step)
        assert loss == ref_loss
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=0, rtol=0, msg=name)


def test_offload_checkpoints_needs_checkpointing_and_replaces_transformers_offload():
    with pytest.raises(ValueError, match="activation_checkpointing: must be true with offload_checkpoints"):
        TrainArgs(output_dir="unused", offload_checkpoints=True, activation_checkpointing=False, report_to="none")
    with pytest.raises(ValueError, match="activation_checkpointing_kwargs: offload: use offload_checkpoints true"):
        TrainArgs(output_dir="unused", activation_checkpointing_kwargs={"use_reentrant": False, "offload": True},
                  report_to="none")
    TrainArgs(output_dir="unused", offload_checkpoints=True, padding_free=True, attn_implementation="varlen",
              cuda_graphs=True, report_to="none")  # the graphs capture the copies (a GPU test below)


def test_transformers_offload_is_refused_before_the_run_folder_is_written(tiny_model, toy_data, tmp_path, capsys):
    """transformers' own offload (save_on_cpu with pinned memory) stopped a CPU run at its first step, after the
    run folder was written; it is refused up front, pointing to offload_checkpoints."""
    import main_train
    out = tmp_path / "out"
    assert main_train.cli(train_argv(tiny_model("qwen"), toy_data, out, "--activation_checkpointing_kwargs",
                                     json.dumps({"use_reentrant": False, "offload": True}))) == 2
    assert "offload: use offload_checkpoints true" in capsys.readouterr().err
    assert not out.exists()


def test_main_train_offloads_and_trains_as_plain_checkpointing(tiny_model, toy_data, tmp_path, capsys):
    import main_train
    argv = train_argv(tiny_model("qwen"), toy_data, tmp_path / "plain", "--max_steps", "2")
    plain = main_train.main(argv)
    offloaded = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "offloaded", "--max_steps", "2",
                                           "--offload_checkpoints", "true"))
    assert "checkpointed layers' inputs in host memory" in capsys.readouterr().out
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, offloaded)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6) and losses[0]
    layers = [m for m in offloaded.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m._gradient_checkpointing_func.offloads_inputs for m in layers)


def test_offloaded_inputs_are_not_counted_on_the_gpu():
    from tests.utils.test_memory import _estimate
    kept = _estimate(tokens=4096, row_len=4096, attn_implementation="varlen")  # no mask: activations are inputs
    offloaded = _estimate(tokens=4096, row_len=4096, attn_implementation="varlen", offload_checkpoints=True)
    assert kept["activations"] > 0 and offloaded["activations"] == 0
    assert offloaded["total"] < kept["total"]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned host memory)")


@pytest.mark.gpu
@gpu
def test_offload_frees_the_layer_inputs_on_the_gpu_and_trains_the_same():
    """At the loss, the GPU holds no checkpointed layer input: memory drops by at least layers x tokens x hidden x 2
    bytes (what the estimate takes off), and the loss and gradients are the plain checkpointing's (the copies are
    exact). bench/README.md (fifteenth session) has what a GPU measured."""
    import gc
    # eager attention: flash attention's backward accumulates with atomics, so two runs differ in their last bits
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=2, use_cache=False,
                                      attn_implementation="eager")
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (1, 4096), device="cuda")
    results = []
    for offloaded in (False, True):
        gc.collect()
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        model = transformers.Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).train()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.model.embed_tokens.weight.requires_grad_(True)
        if offloaded:
            offload_checkpoint_inputs(model)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = model(input_ids=ids, labels=ids).loss
        at_loss = torch.cuda.memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        results.append((loss.item(), at_loss, model.model.layers[0].mlp.up_proj.weight.grad.float().cpu()))
        del model, loss
    inputs = config.num_hidden_layers * ids.shape[1] * config.hidden_size * 2
    print(f"at the loss: {results[0][1] / 2**20:.0f} MiB kept, {results[1][1] / 2**20:.0f} MiB offloaded "
          f"(layer inputs {inputs / 2**20:.0f} MiB)")
    assert results[1][0] == results[0][0]
    torch.testing.assert_close(results[1][2], results[0][2], atol=0, rtol=0)
    assert results[0][1] - results[1][1] >= 0.9 * inputs


@pytest.mark.gpu
@gpu
def test_offload_inside_a_cuda_graph_replays_the_eager_step():
    """offload_checkpoints under cuda_graphs: the copies captured in a graph (pinned host memory allocated during
    the capture stays with the graph) replay the eager losses."""
    from utils.cuda_graphs import GraphedStep
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).cuda().train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False,
                                                                           "preserve_rng_state": False})
    model.model.embed_tokens.weight.requires_grad_(True)
    batches = [torch.randint(0, 256, (1, n), device="cuda") for n in (512, 1024, 512, 1024)]
    params = [p for p in model.parameters() if p.requires_grad]
    eager = []
    for ids in batches:
        eager.append(model(input_ids=ids, labels=ids).loss.item())
    offload_checkpoint_inputs(model)
    step = GraphedStep(params, lambda inputs, items: model(**inputs).loss)
    replayed = []
    for ids in batches:
        for p in params:
            p.grad = None
        replayed.append(step({"input_ids": ids, "labels": ids}, ids.numel()).item())
    assert len(step.graphs) == 2
    assert replayed == pytest.approx(eager, rel=1e-5)
