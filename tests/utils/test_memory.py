"""The memory estimate: its parts respond to each switch the way the allocations do, on a GPU it lands within 15%
of the measured peak (the bench rows check the same on the real 0.5B/7B shapes), and --dry_run prints it, sized by
the largest micro-batch or piece and after memory_budget_gb, without loading weights."""
from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import main_train

from tests.conftest import TOY_RECORDS, train_argv, write_jsonl
from train_args.base import TrainArgs
from utils.memory import (ALLOCATOR_VARIABLES, checkpointing_choices, estimate_peak, fit_memory_budget,
                          fit_micro_batch_max_tokens, meta_model, worst_batch_tokens)


def _config(vocab=32000, layers=4):
    return transformers.Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
                                    num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)


def _estimate(tokens=2048, rows=1, row_len=2048, vocab=32000, **fields):
    base = dict(output_dir="unused", use_cpu=True, torch_dtype="bfloat16", lora_dropout=0.0, report_to="none",
                gradient_accumulation_steps=1, padding_free=rows == 1)
    args = TrainArgs(**{**base, **fields})
    return estimate_peak(meta_model(args, _config(vocab)), args, tokens, row_len, rows)


def test_parts_add_up_to_the_total():
    parts = _estimate()
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_fused_loss_removes_the_full_vocabulary_logits():
    plain, fused = _estimate(), _estimate(use_liger_kernel=True)
    logits_gb = 2048 * 32000 * 12 / 1e9
    assert plain["loss_or_layer"] == pytest.approx(logits_gb)
    assert fused["total"] < plain["total"] - 0.9 * logits_gb


def test_full_finetuning_pays_for_gradients_and_two_adam_moments():
    lora = _estimate(use_liger_kernel=True)
    full = _estimate(train_mode="full", use_liger_kernel=True, gradient_accumulation_steps=2)  # grads always held
    weights = sum(p.numel() for p in meta_model(TrainArgs(output_dir="x", use_cpu=True, torch_dtype="bfloat16",
                                                         train_mode="full"), _config()).parameters()) * 2 / 1e9
    assert full["optimizer"] == pytest.approx(2 * weights)
    assert full["gradients"] == pytest.approx(weights)
    assert lora["optimizer"] < 0.1 * full["optimizer"]


def test_qlora_stores_decoder_weights_in_four_bits():
    lora, qlora = _estimate(vocab=512), _estimate(vocab=512, train_mode="qlora")
    assert qlora["weights"] < 0.5 * lora["weights"]  # 4.5 of 16 bits per decoder weight; embeddings, adapters


def test_qlora_counts_embeddings_and_residual_in_fp32_only_on_an_fp16_base():
    """prepare_quantized casts the frozen unquantized weights to fp32 on an fp16 base, not on a bf16 one."""
    bf16, fp16 = _estimate(train_mode="qlora"), _estimate(train_mode="qlora", torch_dtype="float16")
    embeddings = 32000 * 256 / 1e9  # tied: one matrix
    assert fp16["weights"] - bf16["weights"] == pytest.approx(2 * embeddings, rel=0.02)  # 4 bytes, not 2 (+ norms)
    assert fp16["activations"] > bf16["activations"]  # the residual stream the layers keep: fp32 against bf16


def test_checkpointing_keeps_only_layer_inputs():
    on, off = _estimate(use_liger_kernel=True), _estimate(use_liger_kernel=True, activation_checkpointing=False)
    assert off["activations"] > 4 * on["activations"]


def test_every_n_layers_checkpoints_one_layer_in_n():
    """transformers' selective checkpointing (every_n_layers 2: layers 0 and 2 of 4): half the layers keep their
    inputs only, the other half all their saved tensors."""
    def activations(**fields):
        return _estimate(use_liger_kernel=True, **fields)["activations"]
    every_2 = activations(activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 2})
    all_, none = activations(), activations(activation_checkpointing=False)
    assert every_2 == pytest.approx((all_ + none) / 2)
    assert activations(activation_checkpointing_kwargs={"every_n_layers": 4}) == pytest.approx((3 * none + all_) / 4)


def _saved_bytes_per_token_in_layers(model, tokens: int, device: str = "cpu") -> float:
    """Bytes of the distinct non-parameter tensors the decoder layers save for the backward, per token and layer,
    in a bf16-autocast forward (as the Trainer runs it on a GPU)."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    inside, storages = [False], {}
    hooks = [h for layer in layers for h in (layer.register_forward_pre_hook(lambda *a: inside.__setitem__(0, True)),
                                             layer.register_forward_hook(lambda *a: inside.__setitem__(0, False)))]

    def pack(t):
        if inside[0] and t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(3, 128, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    for h in hooks:
        h.remove()
    return sum(storages.values()) / tokens / len(layers)


def _layer_config(hidden=128, inter=512, heads=4, kv=2):
    return transformers.Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                                    num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
                                    attn_implementation="sdpa", use_cache=False)


def _counted_layer_bytes(config, tokens: int, compiled: bool, dora: bool = False, factored: bool = False,
                         device: str = "cpu", fused: bool = False) -> float:
    """What autograd keeps per token and layer in a bf16 LoRA (or DoRA) model of `config` (the compiled layer's
    partitioned graph when compiled)."""
    import copy
    from types import SimpleNamespace

    from utils.model import apply_peft, compile_layers
    torch.manual_seed(0)
    fields = SimpleNamespace(train_mode="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0, use_dora=dora,
                             lora_target_modules=None, factored_dora_norm=factored, fused_lora=fused,
                             use_rslora=False,
                             init_lora_weights="gaussian", compile_layers=compiled, activation_checkpointing=False,
                             train_new_tokens=False)
    model = apply_peft(transformers.Qwen2ForCausalLM(config).to(device, torch.bfloat16), fields)
    if compiled:
        torch._dynamo.reset()
        model = compile_layers(copy.deepcopy(model), fields)
        _saved_bytes_per_token_in_layers(model, tokens, device)  # compile first: dynamo's first run is not steady
    return _saved_bytes_per_token_in_layers(model.train(), tokens, device)


@pytest.mark.parametrize("compiled", [False, True])
def test_layer_activation_bytes_match_what_a_lora_layer_saves(compiled):
    """The per-token bytes the estimate counts for one layer, against the tensors autograd really keeps (eager, or
    the compiled layer's partitioned graph), within 10%."""
    from utils.memory import layer_activation_bytes
    config = _layer_config()
    counted = _counted_layer_bytes(config, 256, compiled)
    assert layer_activation_bytes(config, 1, compiled=compiled) == pytest.approx(counted, rel=0.10)


def _dora_bytes_over_lora(factored: bool, compiled: bool, device: str, fused: bool = False, **dims) -> float:
    """Per output feature of the adapted linears and per token: what a DoRA layer keeps beyond a LoRA layer
    (2,048 tokens: weight-sized tensors count little, except the scaled weights a compiled fused DoRA keeps)."""
    config = _layer_config(**dims)
    lora = _counted_layer_bytes(config, 2048, compiled, device=device, fused=fused)
    dora = _counted_layer_bytes(config, 2048, compiled, dora=True, factored=factored, device=device, fused=fused)
    h, kv = config.hidden_size, config.num_key_value_heads * config.head_dim
    return (dora - lora) / (3 * h + 2 * kv + 2 * config.intermediate_size)  # q, o, down; k, v; gate, up


@pytest.mark.parametrize("factored", [False, True])
def test_dora_kept_bytes_match_what_an_eager_dora_layer_saves_over_lora(factored):
    """Eager DoRA keeps the base output and the LoRA output of every adapted linear (2 + 2 bytes per output feature
    and token in bf16), whichever norm computes the rescale; within 10%. (A compiled layer keeps less on the GPU;
    CPU inductor keeps more, so that figure comes from the H200 bench row and the GPU test below.)"""
    from utils.memory import DORA_KEPT_BYTES
    assert _dora_bytes_over_lora(factored, compiled=False, device="cpu") == pytest.approx(DORA_KEPT_BYTES[False],
                                                                                         rel=0.10)


def test_fused_dora_keeps_only_the_outputs_the_next_op_does_not_keep():
    """fused_lora: an eager DoRA layer at Qwen2.5-0.5B's width keeps beyond LoRA only the outputs of q, k, o and
    down (the others are kept by the ops that read them): about half a byte per output feature and token, where
    peft's form keeps 4; within 10%."""
    from utils.memory import FUSED_DORA_KEPT_BYTES
    assert _dora_bytes_over_lora(True, compiled=False, device="cpu", fused=True, hidden=896, inter=4864,
                                 heads=14) == pytest.approx(FUSED_DORA_KEPT_BYTES, rel=0.10)


def test_compiled_fused_dora_counts_the_scaled_weights_of_each_layer_without_checkpointing():
    """A compiled fused DoRA layer keeps g ⊙ W of every linear it scales: with no checkpointing, every layer's."""
    fields = dict(fused_lora=True, activation_checkpointing=False, chunked_loss=True)
    dora = dict(use_dora=True, factored_dora_norm=True)

    def dora_over_lora(**compiled):
        return _estimate(**fields, **dora, **compiled)["activations"] - _estimate(**fields, **compiled)["activations"]
    config = _config(32000)
    h, kv = config.hidden_size, config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    scaled = 2 * h * (2 * h + 2 * kv + 3 * config.intermediate_size)  # every linear: 2,048 tokens >= its inputs
    grown = (dora_over_lora(compile_layers=True) - dora_over_lora()) * 1e9
    assert grown == pytest.approx(config.num_hidden_layers * scaled, rel=0.01)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (inductor's GPU partition)")
def test_compiled_fused_dora_keeps_what_the_estimate_counts_on_gpu():
    """Compiled, at Qwen2.5-0.5B's layer width and 2,048 tokens, the partitioner keeps each scaled weight g ⊙ W
    (weight-sized) besides the outputs: the estimate's two terms, within 15%."""
    from utils.memory import FUSED_DORA_KEPT_BYTES
    config = _layer_config(hidden=896, inter=4864, heads=14)
    h, kv, inter = config.hidden_size, config.num_key_value_heads * config.head_dim, config.intermediate_size
    outs = 3 * h + 2 * kv + 2 * inter
    scaled = 2 * h * (2 * h + 2 * kv + 2 * inter)  # bf16 g ⊙ W of q, k, v, o, gate, up (down: 4,864 > 2,048 inputs)
    kept = _dora_bytes_over_lora(True, compiled=True, device="cuda", fused=True, hidden=896, inter=4864, heads=14)
    print(f"fused DoRA, compiled: {kept:.2f} bytes per output feature and token over LoRA")
    assert kept == pytest.approx(FUSED_DORA_KEPT_BYTES + scaled / (2048 * outs), rel=0.15)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (inductor's GPU partition)")
@pytest.mark.parametrize("factored", [False, True])
def test_dora_kept_bytes_match_what_a_compiled_dora_layer_saves_on_gpu(factored):
    """The compiled figure, at Qwen2.5-0.5B's layer width, within 20% (it was read off one bench row)."""
    from utils.memory import DORA_KEPT_BYTES
    kept = _dora_bytes_over_lora(factored, compiled=True, device="cuda", hidden=896, inter=4864, heads=14)
    assert kept == pytest.approx(DORA_KEPT_BYTES[True], rel=0.20)


LENGTHS = [1500, 1200, 900, 800, 700, 600, 500, 400]  # one micro-batch of 8: 6,600 tokens


def _budget_args(budget, **fields):
    return TrainArgs(output_dir="unused", use_cpu=True, torch_dtype="bfloat16", lora_dropout=0.0, report_to="none",
                     per_device_train_batch_size=8, gradient_accumulation_steps=1, padding_free=True,
                     memory_budget_gb=budget, **fields)


def _predicted(cap):
    args = _budget_args(1.0, micro_batch_max_tokens=cap)
    return estimate_peak(meta_model(args, _config()), args, *worst_batch_tokens(LENGTHS, 8, True, 1, cap))["total"]


def test_memory_budget_picks_the_largest_cap_that_fits():
    budget = (_predicted(2048) + _predicted(2304)) / 2  # between two 256-token steps
    args = _budget_args(budget)
    cap, line = fit_micro_batch_max_tokens(args, LENGTHS, config=_config())
    assert cap == 2048 and "micro_batch_max_tokens 2048" in line
    assert args.micro_batch_max_tokens == 0  # the plan holds the cap; the field keeps what was given
    assert _predicted(1536) < _predicted(2048) < budget < _predicted(2304) < _predicted(0)


def test_memory_budget_with_every_n_layers_cuts_smaller_pieces():
    """Under the same budget, keeping every other layer's activations (every_n_layers 2) leaves room for fewer
    tokens per piece: the budget's cap falls, and its prediction still fits."""
    budget = _predicted(2048) + 0.01  # 10 MB over what 2,048 tokens need with every layer checkpointed
    every_layer = _budget_args(budget)
    assert fit_micro_batch_max_tokens(every_layer, LENGTHS, config=_config())[0] == 2048
    args = _budget_args(budget, activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 2})
    cap, line = fit_micro_batch_max_tokens(args, LENGTHS, config=_config())
    assert 1536 <= cap < 2048 and f"micro_batch_max_tokens {cap}" in line
    fitted = estimate_peak(meta_model(args, _config()), args, *worst_batch_tokens(LENGTHS, 8, True, 1, cap))
    assert fitted["total"] <= budget


def test_memory_budget_that_holds_the_whole_micro_batch_splits_nothing():
    args = _budget_args(_predicted(0) + 0.01, micro_batch_max_tokens=1024)
    cap, line = fit_micro_batch_max_tokens(args, LENGTHS, config=_config())
    assert cap == 0 and "whole micro-batch fits" in line


def test_memory_budget_below_the_longest_sample_is_refused():
    args = _budget_args(_predicted(1536) - 0.01)  # 1,536: the longest sample (1,500) rounded up to a step
    with pytest.raises(ValueError, match=r"memory_budget_gb .*piece of 1,536 tokens \(the longest sample\)"):
        fit_micro_batch_max_tokens(args, LENGTHS, config=_config())
    with pytest.raises(ValueError, match="memory_budget_gb: must be >= 0 and needs padding_free"):
        TrainArgs(output_dir="unused", use_cpu=True, memory_budget_gb=16)


def _predicted_whole(every_n):
    """The whole micro-batch's prediction with every_n_layers n checkpointed (0: none)."""
    kwargs = {"activation_checkpointing": False} if every_n == 0 else dict(
        activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": every_n})
    args = _budget_args(1.0, **kwargs)
    return estimate_peak(meta_model(args, _config()), args, *worst_batch_tokens(LENGTHS, 8, True))["total"]


def test_checkpointing_choices_go_from_none_to_every_layer_one_checkpoint_more_each():
    assert checkpointing_choices(4) == [0, 4, 3, 1]  # 0, 1 (layer 0), 2 (layers 0 and 3) and 4 of 4 checkpointed
    counts = [-(-24 // n) for n in checkpointing_choices(24)[1:]]
    assert counts == sorted(set(counts)) and counts[0] == 1 and counts[-1] == 24


def test_memory_budget_with_room_turns_checkpointing_off():
    """A budget that holds the whole micro-batch with every activation kept: no recompute at all."""
    fit = fit_memory_budget(_budget_args(_predicted_whole(0) + 0.01), LENGTHS, config=_config())
    assert fit.max_tokens == 0 and fit.fields == {"activation_checkpointing": False}
    assert "no activation checkpointing, whole micro-batches" in fit.reason


def test_memory_budget_checkpoints_the_fewest_layers_that_fit():
    """Between two choices the budget takes the one with fewer recomputed layers that still fits: 2 of 4 layers
    checkpointed (every_n_layers 3: layers 0 and 3) when 1 of 4 does not fit."""
    assert _predicted_whole(1) < _predicted_whole(3) < _predicted_whole(4) < _predicted_whole(0)
    budget = (_predicted_whole(3) + _predicted_whole(4)) / 2
    fit = fit_memory_budget(_budget_args(budget), LENGTHS, config=_config())
    assert fit.max_tokens == 0
    assert fit.fields == {"activation_checkpointing_kwargs": {"use_reentrant": False, "every_n_layers": 3}}


def test_memory_budget_checkpoints_every_layer_before_it_cuts_pieces():
    """Only when every layer checkpointed still does not hold the whole micro-batch does the budget cut pieces, and
    then with the checkpointing as given."""
    fit = fit_memory_budget(_budget_args(_predicted_whole(1) - 0.01), LENGTHS, config=_config())
    assert fit.fields == {} and 0 < fit.max_tokens < sum(LENGTHS)
    fit = fit_memory_budget(_budget_args(_predicted_whole(1) + 0.01), LENGTHS, config=_config())
    assert fit.fields == {} and fit.max_tokens == 0


def test_memory_budget_keeps_the_checkpointing_a_user_gave():
    """every_n_layers given (1 included) or checkpointing off: the budget only cuts pieces."""
    budget = _predicted_whole(0) + 0.01
    for fields in ({"activation_checkpointing_kwargs": {"use_reentrant": False, "every_n_layers": 1}},
                   {"activation_checkpointing": False}):
        fit = fit_memory_budget(_budget_args(budget, **fields), LENGTHS, config=_config())
        assert fit.fields == {} and fit.max_tokens == 0 and "the whole micro-batch fits" in fit.reason


def test_padded_batch_is_sized_by_its_longest_sample():
    assert worst_batch_tokens([10, 300, 20, 40], 2, padding_free=False) == (600, 300, 2)
    assert worst_batch_tokens([10, 300, 20, 40], 2, padding_free=True) == (340, 340, 1)
    # micro_batch_max_tokens: the longest piece, max_tokens unless one sample is longer
    assert worst_batch_tokens([10, 300, 20, 40], 3, padding_free=True, max_tokens=100) == (300, 300, 1)
    assert worst_batch_tokens([10, 90, 20, 40], 3, padding_free=True, bucket=64, max_tokens=100) == (128, 128, 1)


EVERY_OTHER_LAYER = dict(activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 2})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fields", [dict(), dict(use_liger_kernel=True), dict(train_mode="full"), EVERY_OTHER_LAYER])
def test_estimate_within_15_percent_of_measured_peak(fields):
    from utils.model import apply_peft
    from utils.collators import PaddingFreeCollator
    pytest.importorskip("liger_kernel") if fields.get("use_liger_kernel") else None
    args = TrainArgs(output_dir="unused", bf16=True, lora_dropout=0.0, report_to="none", padding_free=True,
                     gradient_accumulation_steps=1, **fields)
    config = transformers.Qwen2Config(  # the bench's Qwen2.5-0.5B shape, where the constants were measured
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    gc.collect()  # what earlier tests left on the GPU is not this run's: measure from here
    start = torch.cuda.memory_allocated()
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if args.use_liger_kernel:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model, rope=False, rms_norm=False, swiglu=False)
    model = apply_peft(model, args)
    kwargs = dict(args.activation_checkpointing_kwargs)  # as the Trainer passes them
    every = kwargs.pop("every_n_layers", 1)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    lengths = (1200, 900, 700, 500, 400, 300, 200, 100)  # 4,300 tokens: 8 samples, as a bench step
    feats = [{"input_ids": (ids := torch.randint(0, 151000, (n,)).tolist()), "labels": ids} for n in lengths]
    batch = {k: v.cuda() for k, v in PaddingFreeCollator()(feats).items()}
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    measured = (torch.cuda.max_memory_allocated() - start) / 1e9
    predicted = estimate_peak(meta_model(args, config), args, sum(lengths), sum(lengths), 1)["total"]
    assert abs(predicted - measured) / measured < 0.15, (predicted, measured)


def test_dry_run_predicts_peak_memory_without_loading_weights(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    assert main_train.main(train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen",
                                      "--dry_run", "true")) is None
    out = capsys.readouterr().out
    assert re.search(r"predicted peak GPU memory \d+\.\d+ GB for the largest micro-batch", out)
    for part in ("weights", "optimizer", "activations", "workspace"):
        assert part in out
    assert not (tmp_path / "o").exists()


def test_dry_run_sizes_the_prediction_by_the_longest_piece(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    argv = train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true",
                      "--padding_free", "true", "--per_device_train_batch_size", "4")
    main_train.main(argv)
    whole = re.search(r"largest micro-batch \(1 rows, (\d+) tokens\)", capsys.readouterr().out)
    main_train.main(argv + ["--micro_batch_max_tokens", "30"])
    piece = re.search(r"largest piece \(1 rows, (\d+) tokens\)", capsys.readouterr().out)
    assert whole and piece and int(piece.group(1)) < int(whole.group(1))


def test_memory_budget_is_applied_before_the_dry_run_prediction(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", TOY_RECORDS)
    argv = train_argv(tiny_model("qwen"), data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true",
                      "--padding_free", "true", "--memory_budget_gb", "80")
    main_train.main(argv)  # (that the estimate follows the plan's choice: test_step_plan.py, on a larger model)
    assert "memory_budget_gb 80: no activation checkpointing, whole micro-batches" in capsys.readouterr().out
    main_train.main(argv + ["--activation_checkpointing_kwargs", '{"use_reentrant": false, "every_n_layers": 1}'])
    assert "memory_budget_gb 80: the whole micro-batch fits" in capsys.readouterr().out  # as given: every layer
    with pytest.raises(ValueError, match=r"memory_budget_gb 0.0001: even a piece of .* does not fit"):
        main_train.main(argv[:-1] + ["0.0001"])
    assert not (tmp_path / "o").exists()



ALLOCATOR_PROBE = ("import main_train, torch; from utils.memory import prefer_expandable_segments as prefer; "
                   "line = prefer(); x = torch.ones(1 << 20, device='cuda'); print(line is not None, "
                   "all(s['is_expandable'] for s in torch.cuda.memory._snapshot()['segments']))")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("given, expected", [(None, ["True", "True"]),
                                             ("expandable_segments:False", ["False", "False"])])
def test_training_runs_grow_cuda_segments_in_place_unless_the_user_set_the_allocator(given, expected):
    """In a fresh process that imports main_train.py first, as a run does (bitsandbytes starts CUDA on import)."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    if given:
        env["PYTORCH_CUDA_ALLOC_CONF"] = given
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, cwd=Path(main_train.__file__).parent,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == expected
