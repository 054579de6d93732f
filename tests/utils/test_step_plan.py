"""The step plan: the switch rules' errors, the model capability table, derived Trainer settings (applied to the
Trainer's copy of the args, logged, never written back), and the bench rows as named plans."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers

import main_train
from tests.conftest import train_argv
from train_args.base import ConfigError, TrainArgs
from utils.loss import check_model
from utils.step_plan import MODEL_CAPABILITIES, build_plan, capability_problems
from utils.trainer import DojoTrainer

REPO = Path(__file__).resolve().parents[2]
FAST = dict(padding_free=True, attn_implementation="varlen", chunked_loss=True, cuda_graphs=True)


def _args(**fields):
    return TrainArgs(output_dir="unused", use_cpu=True, bf16=False, report_to="none", lora_dropout=0.0, **fields)


def _qwen2():
    return transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)


def test_switch_rules_report_every_broken_rule_at_once():
    with pytest.raises(ConfigError) as err:
        _args(cuda_graphs=True, attn_implementation="varlen", memory_budget_gb=8, lora_rank=0)
    fields = [p.split(":")[0] for p in err.value.problems]
    assert fields == ["lora_rank", "attn_implementation", "cuda_graphs", "memory_budget_gb"]
    assert "cuda_graphs: needs padding_free true and attn_implementation varlen" in err.value.problems[2]
    with pytest.raises(ConfigError, match="stage: padding_free and chunked_loss serve stage sft and stage dpo"):
        _args(stage="kto", padding_free=True)
    assert _args(stage="dpo", padding_free=True).padding_free  # DPO's fast path packs chosen and rejected


def test_one_process_switches_are_refused_under_torchrun(monkeypatch):
    """Under torchrun (WORLD_SIZE 2) the single-process paths stop at the config, before anything is loaded."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as err:
        _args(**FAST, micro_batch_max_tokens=512)
    found = [p for p in err.value.problems if "runs in one process only" in p]
    assert [p.split(":")[0] for p in found] == ["cuda_graphs", "chunked_loss", "micro_batch_max_tokens"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _args(**FAST, micro_batch_max_tokens=512).cuda_graphs


def test_one_capability_table_answers_padding_free_and_chunked_loss():
    cohere = transformers.CohereConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ConfigError) as err:
        build_plan(_args(padding_free=True, chunked_loss=True), cohere)
    assert [p.split(":")[0] for p in err.value.problems] == ["padding_free", "chunked_loss"]
    with pytest.raises(ValueError, match=re.escape(err.value.problems[1])):  # the loss reads the same table
        check_model(cohere)
    etude = SimpleNamespace(model_type="etude")  # chunked loss yes, padding-free no (as before the table)
    assert capability_problems(etude, chunked_loss=True) == []
    assert capability_problems(etude, padding_free=True)[0].startswith("padding_free: needs")
    assert build_plan(_args(**FAST), _qwen2()).model_type == "qwen2"


@pytest.mark.parametrize("model_type", sorted(set(MODEL_CAPABILITIES) - {"etude"}))
def test_capabilities_match_what_the_model_config_declares(model_type):
    """softcap rows are the configs with final_logit_softcapping; causal_lm aux-loss rows those with
    output_router_logits (whose router loss only the model's own forward adds)."""
    caps, config = MODEL_CAPABILITIES[model_type], transformers.CONFIG_MAPPING[model_type]()
    assert caps.softcap == hasattr(config, "final_logit_softcapping")
    assert (caps.aux_loss == "causal_lm") == hasattr(config, "output_router_logits")
    config.output_router_logits = True
    refused = capability_problems(config, chunked_loss=True)
    assert bool(refused) == (caps.aux_loss == "causal_lm")


def test_the_plan_line_says_when_cuda_graphs_fall_back_to_the_plain_step():
    """The plan is the config's (a --dry_run on a laptop plans the GPU run), but the line a run logs says what runs
    on this machine: without CUDA the graphed step is the Trainer's plain step."""
    line = build_plan(_args(**FAST), _qwen2()).describe()
    assert "step runner cuda_graph" in line
    assert ("no CUDA device here" in line) == (not torch.cuda.is_available())


def test_the_plan_line_says_pieces_are_padded_to_the_graph_bucket():
    """With cuda_graphs a piece is padded up to a multiple of the bucket: a cap that is not one says so."""
    assert "pieces of <= 64 tokens (each padded to a multiple of 512)" in build_plan(
        _args(**FAST, micro_batch_max_tokens=64), _qwen2()).describe()
    assert "padded" not in build_plan(_args(**FAST, micro_batch_max_tokens=1024), _qwen2()).describe()


def test_cuda_graph_settings_are_derived_for_the_trainer_and_not_written_back():
    args = _args(**FAST)
    plan = build_plan(args, _qwen2())
    assert {d.field for d in plan.derived} == {"activation_checkpointing_kwargs", "accelerator_config",
                                               "include_num_input_tokens_seen"}
    assert all(d.reason and f"{d.field} " in plan.describe() for d in plan.derived)
    trainer = DojoTrainer(model=transformers.Qwen2ForCausalLM(_qwen2()), args=args, plan=plan)
    # the effective Trainer behaviour: the accelerator copies batches non-blocking, no token count, no RNG state
    assert trainer.accelerator.dataloader_config.non_blocking and trainer.args.accelerator_config.non_blocking
    assert trainer.args.include_num_input_tokens_seen == "no"
    assert trainer.args.activation_checkpointing_kwargs == {"preserve_rng_state": False, "use_reentrant": False}
    assert trainer.args.gradient_checkpointing_kwargs == trainer.args.activation_checkpointing_kwargs
    # the args as given
    assert not args.accelerator_config.non_blocking and args.include_num_input_tokens_seen == "non_padding"
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}


def test_given_settings_win_over_derived_ones():
    kept = build_plan(_args(**FAST, accelerator_config={"non_blocking": False}), _qwen2())
    assert "accelerator_config" not in {d.field for d in kept.derived}
    # with dropout the recompute must replay the same masks: the RNG state is kept
    dropout = TrainArgs(output_dir="unused", use_cpu=True, bf16=False, report_to="none", lora_dropout=0.1, **FAST)
    assert "activation_checkpointing_kwargs" not in {d.field for d in build_plan(dropout, _qwen2()).derived}
    assert build_plan(_args(), _qwen2()).derived == ()
    trainer = DojoTrainer(model=transformers.Qwen2ForCausalLM(_qwen2()),
                          args=_args(**FAST, accelerator_config={"non_blocking": False}))
    assert not trainer.accelerator.dataloader_config.non_blocking


def test_evaluation_data_turns_on_evaluation_at_each_checkpoint_in_the_trainers_args_only():
    args = _args(save_steps=7)
    trainer_args = build_plan(args, _qwen2(), eval_data=True).trainer_args(args)
    assert (trainer_args.eval_strategy, trainer_args.eval_steps) == ("steps", 7)
    assert args.eval_strategy == "no" and args.eval_steps is None
    given = _args(eval_steps=3)
    assert build_plan(given, _qwen2(), eval_data=True).trainer_args(given).eval_steps == 3
    assert build_plan(args, _qwen2()).derived == ()  # no evaluation data: nothing to evaluate


def test_plan_is_logged_once_and_recorded_in_the_run_folder(tiny_model, toy_data, tmp_path, capsys):
    """The dry run logs the one plan line, memory_budget_gb's choice with its reason; the field keeps its value."""
    argv = train_argv(tiny_model("qwen"), toy_data, tmp_path / "o", "--template_name", "qwen", "--dry_run", "true",
                      "--padding_free", "true", "--memory_budget_gb", "80")
    main_train.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dojo] plan: ")]
    assert len(lines) == 1 and "collator padding_free" in lines[0] and "loss backend model" in lines[0]
    assert "activation_checkpointing False (memory_budget_gb 80: no activation checkpointing" in lines[0]
    assert "micro_batch_max_tokens 0 (memory_budget_gb 80: no activation checkpointing" in lines[0]
    plan = build_plan(_args(**FAST), _qwen2())
    plan.save(tmp_path)
    saved = json.loads((tmp_path / "step_plan.json").read_text())
    assert saved["step_runner"] == "cuda_graph" and len(saved["derived"]) == 3


# --- bench rows are named plans ------------------------------------------------------------------------------------
GRAPHS = ("bucketed", "chunked", "cuda_graph")
LIGER = ("padding_free", "liger_fused", "plain")
BENCH_PLANS = {  # row -> (collator, loss backend, step runner), as the row ran before the plan existed
    "dojo_lora_padded": ("plain", "model", "plain"),
    "dojo_lora_padding_free": ("padding_free", "model", "plain"),
    "dojo_lora_padding_free_liger": LIGER, "dojo_lora_fast": ("padding_free", "model", "plain"),
    "dojo_lora_fast_liger": LIGER, "dojo_lora_fast_liger_all": LIGER, "dojo_lora_fast_liger_nockpt": LIGER,
    "dojo_lora_fast_nockpt": ("padding_free", "model", "plain"), "dojo_dora_fast_liger": LIGER,
    "dojo_full_fast_liger": LIGER, "dojo_lora7b_fast_liger": LIGER, "dojo_qlora7b_fast_liger": LIGER,
    "dojo_lora_chunked": ("padding_free", "chunked", "plain"),
    "dojo_lora_chunked_offload": ("padding_free", "chunked", "plain"),
    **{name: GRAPHS for name in ("dojo_lora_graphs", "dojo_lora_graphs_ga2", "dojo_lora_graphs_blocking",
                                 "dojo_lora7b_graphs_ga2", "dojo_lora_graphs_cap3584", "dojo_lora_graphs_cap3072",
                                 "dojo_lora_graphs_cap2560", "dojo_lora_graphs_cap2048", "dojo_lora_graphs_cap4096",
                                 "dojo_lora7b_graphs_cap3072", "dojo_lora7b_graphs_cap2560", "dojo_lora_graphs_eager",
                                 "dojo_lora_graphs_nockpt", "dojo_lora_graphs_every2", "dojo_dora_graphs",
                                 "dojo_dora_graphs_factored", "dojo_dora_graphs_nockpt", "dojo_full_graphs",
                                 "dojo_lora7b_graphs", "dojo_lora7b_graphs_b1", "dojo_qlora7b_graphs",
                                 "dojo_lora_graphs_budget40", "dojo_lora7b_graphs_budget70",
                                 "dojo_qlora7b_graphs_compiled", "dojo_lora_graphs_fused", "dojo_dora_graphs_fused",
                                 "dojo_lora_graphs_cap2048_fused", "dojo_lora_graphs_cap2048_fused_offload",
                                 "dojo_qlora7b_graphs_offload_cap2048_fused",
                                 "dojo_lora_graphs_cap2048_b2048_fused_offload",
                                 "dojo_qlora7b_graphs_offload_cap2048_b2048_fused",
                                 "dojo_qlora7b_graphs_compiled_fused",
                                 "dojo_full_graphs_budget60")},
}


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # bench.py imports memory_peak beside it
    spec = importlib.util.spec_from_file_location("dojo_bench", REPO / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_bench_row_resolves_to_the_plan_it_names(monkeypatch, tmp_path):
    bench = _bench(monkeypatch)
    assert set(bench.OURS) == set(BENCH_PLANS)
    a = SimpleNamespace(model="0.5b", batch=8, warmup=1, steps=1, warmup_7b=1, steps_7b=1, profile_steps=0, seed=0)
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda prefix: str(tmp_path / prefix))
    for name, expected in BENCH_PLANS.items():
        fields, *_ = bench.row_fields(name, a, "cuda")  # the GPU row's switches, resolved on this CPU
        plan = build_plan(TrainArgs(**{**fields, "bf16": False, "use_cpu": True}), _qwen2())
        assert (plan.collator, plan.loss_backend, plan.step_runner) == expected, name
        assert plan.max_tokens == fields.get("micro_batch_max_tokens", 0)
        derived = {d.field for d in plan.derived}
        assert ("accelerator_config" in derived) == (expected == GRAPHS and name != "dojo_lora_graphs_blocking")


def _peer_bench_file() -> Path:
    """../shared/bench/peer_bench.py beside the checkout; the test skips without it."""
    path = REPO.parent / "shared" / "bench" / "peer_bench.py"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared beside the checkout)")
    return path


def test_bench_rows_and_peers_draw_the_length_distribution_given(monkeypatch):
    """--len_median/--len_sigma/--max_len reach our rows' samples and the peers' worker flags alike (a long-context
    row is every sample at one length)."""
    peer_bench = _peer_bench_file()
    bench = _bench(monkeypatch)
    pb = bench.load_peer_bench(str(peer_bench))
    given = SimpleNamespace(seed=0, len_median=1500.0, len_sigma=0.0, min_len=32, max_len=4096)
    rows = bench.synthetic_rows(pb, given, 6)
    assert [len(r["input_ids"]) for r in rows] == [1500] * 6
    assert all(r["labels"][:600] == [-100] * 600 and r["labels"][600] != -100 for r in rows)
    wide = bench.synthetic_rows(pb, SimpleNamespace(**{**vars(given), "len_median": 800.0, "len_sigma": 0.8}), 400)
    lengths = sorted(len(r["input_ids"]) for r in wide)
    assert 700 <= lengths[200] <= 900 and lengths[-1] <= 4096 and lengths[0] >= 32
    # the peers' workers parse the flags bench.py passes them with peer_bench's own parser and draw the same rows
    monkeypatch.setattr("sys.argv", ["peer_bench.py", *bench.length_flags(given)])
    worker = pb.parse()
    peer_rows, _ = pb.make_rows(6, given.seed, median=worker.len_median, sigma=worker.len_sigma,
                                min_len=worker.min_len, max_len=worker.max_len, prompt_frac=worker.prompt_frac)
    assert peer_rows == rows


def test_unsloth_full_and_qlora_peers_hand_unsloth_their_switches(monkeypatch, tmp_path):
    """bench/peers.py's unsloth rows run peer_bench's own worker with from_pretrained given full_finetuning or
    load_in_4bit (full: no adapters). unsloth needs a GPU, so a stand-in module records what the worker asks of it."""
    peer_bench = _peer_bench_file()
    monkeypatch.setenv("PEER_BENCH", str(peer_bench))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("bench_peers", REPO / "bench" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    seen = []

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            seen.append(("load", kwargs))
            return "model", None

        @staticmethod
        def get_peft_model(model, **kwargs):
            seen.append(("adapters", kwargs))
            return model

    monkeypatch.setitem(sys.modules, "unsloth", SimpleNamespace(FastLanguageModel=FastLanguageModel))

    def worker(name, a):  # peer_bench's worker, down to its unsloth calls
        model, _ = FastLanguageModel.from_pretrained(model_name="dir", load_in_4bit=False, full_finetuning=False)
        return FastLanguageModel.get_peft_model(model, r=16)

    run = peers.unsloth_worker(worker)
    for name in ("unsloth_full", "unsloth_qlora", "unsloth_lora"):
        seen.clear()
        assert run(name, None) == "model"
        load = seen[0][1]
        assert (load["full_finetuning"], load["load_in_4bit"]) == {
            "unsloth_full": (True, False), "unsloth_qlora": (False, True), "unsloth_lora": (False, False)}[name]
        assert [what for what, _ in seen] == (["load"] if name == "unsloth_full" else ["load", "adapters"])
    assert peers.peer_bench.CONFIGS["unsloth_full"]["method"] == "full"  # peer_bench's FLOPs formula for it
    assert peers.peer_bench.CONFIGS["unsloth_qlora"]["model"] == "7b"


def test_budget_checkpointing_joins_the_cuda_graph_kwargs_in_one_derived_setting():
    """memory_budget_gb's every_n_layers and cuda_graphs' preserve_rng_state reach the Trainer as one
    activation_checkpointing_kwargs, and the estimate reads the same choice from the plan."""
    from utils.memory import estimate_peak, meta_model, worst_batch_tokens
    config = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    lengths = [300] * 8  # one layer checkpointed (every_n_layers 4) fits, none does not

    def predicted(every_n):
        args = _args(**FAST, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": every_n})
        return estimate_peak(meta_model(args, config), args, *worst_batch_tokens(lengths, 8, True, 512))["total"]

    args = _args(**FAST, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 memory_budget_gb=predicted(4) + 1e-6)
    plan = build_plan(args, config, lengths)
    kwargs = [d.value for d in plan.derived if d.field == "activation_checkpointing_kwargs"]
    assert kwargs == [{"preserve_rng_state": False, "use_reentrant": False, "every_n_layers": 4}]
    assert plan.trainer_args(args).activation_checkpointing_kwargs == kwargs[0]
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}  # the given field is kept
    estimated = estimate_peak(meta_model(args, config), args, *worst_batch_tokens(lengths, 8, True, 512), plan=plan)
    assert estimated["total"] == pytest.approx(predicted(4))
