"""End-to-end runs of main_train.py on tiny random models of every family, with each family's real tokenizer."""
from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig

import main_train
from tests.conftest import FAMILIES, train_argv
from utils.dora import FactoredNormDora
from utils.fused_lora import FusedLoraForward
from utils.save import ADAPTER_FILE

METHODS = {"full": ["--train_mode", "full"], "lora": ["--train_mode", "lora"],
           "dora": ["--train_mode", "lora", "--use_dora", "true"], "qlora": ["--train_mode", "qlora"]}


def reload(out, model_dir, method):
    if method == "full":
        return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    quant = None
    if method == "qlora":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=quant)
    return PeftModel.from_pretrained(base, out)


def eval_mode(model):
    """model.eval(), except that bitsandbytes does not repack 4-bit weights for its AVX512-BF16 CPU kernel (it does
    so in eval mode on CPUs that have the instructions, and asserts every output size is a multiple of 32: the tiny
    test models have 16; real models are multiples of 32)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


@torch.no_grad()
def dataset_loss(model, dataset) -> float:
    """Mean loss per supervised token over the dataset."""
    eval_mode(model)
    total, count = 0.0, 0
    for row in dataset:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        n = int((labels[0, 1:] != -100).sum())
        total += model(input_ids=ids, labels=labels).loss.item() * n
        count += n
    model.train()
    return total / count


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_method_trains_saves_and_reloads(family, method, tiny_model, toy_data, tmp_path):
    model_dir = tiny_model(family)
    out = tmp_path / "out"
    # the tiny deepseek folder carries DeepSeek-R1's template (its tokenizer's), not the V2 one trained here
    accept = ["--template_mismatch", "ok"] if family == "deepseek" else []
    trainer = main_train.main(train_argv(model_dir, toy_data, out, "--template_name", FAMILIES[family][1],
                                         "--max_steps", "6", *METHODS[method], *accept))
    assert len([h for h in trainer.state.log_history if "loss" in h]) == 6
    # loss on the whole training set falls (per-batch logged losses are too noisy at this size)
    if method == "full":
        initial = dataset_loss(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                               trainer.train_dataset)
    else:  # the base with the adapter switched off is the starting point (B starts at zero)
        with trainer.model.disable_adapter():
            initial = dataset_loss(trainer.model, trainer.train_dataset)
    assert dataset_loss(trainer.model, trainer.train_dataset) < initial - 1e-3

    # the output reloads with plain transformers/peft and computes the same logits as the trained model
    model = eval_mode(trainer.model)
    ids = torch.tensor([trainer.train_dataset[0]["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        after = eval_mode(reload(out, model_dir, method))(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert (out / ("model.safetensors" if method == "full" else ADAPTER_FILE)).is_file()
    assert (out / "loss_curve.png").is_file() and (out / "train_args.json").is_file()
    assert json.loads((out / "step_plan.json").read_text())["collator"] in ("plain", "padding_free")


DORA = ("--use_dora", "true", "--factored_dora_norm", "true")
FUSED = ("--fused_lora", "true", "--lora_dropout", "0")


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("flags,swapped", [(DORA, FactoredNormDora), (FUSED, FusedLoraForward),
                                           (DORA + FUSED, FusedLoraForward)])
def test_our_adapter_forwards_train_and_reload_as_plain_peft(method, flags, swapped, tiny_model, toy_data, tmp_path):
    """factored_dora_norm and fused_lora are forwards of our own (on a 4-bit base too): what they trained, peft's
    own forward reproduces on reload."""
    model_dir, out = tiny_model("qwen"), tmp_path / "out"
    trainer = main_train.main(train_argv(model_dir, toy_data, out, "--template_name", "qwen", "--train_mode", method,
                                         *flags))
    assert any(isinstance(m, swapped) for m in trainer.model.modules())
    ids = torch.tensor([trainer.train_dataset[0]["input_ids"]])
    with torch.no_grad():
        trained = eval_mode(trainer.model)(input_ids=ids).logits
        reloaded = eval_mode(reload(out, model_dir, method))
        assert not any(isinstance(m, swapped) for m in reloaded.modules())
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)


def test_generation_config_stops_on_every_template_stop_token(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    main_train.main(train_argv(tiny_model("qwen"), toy_data, out, "--template_name", "qwen", "--max_steps", "1"))
    config = GenerationConfig.from_pretrained(out)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert sorted(config.eos_token_id) == sorted(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert config.pad_token_id not in config.eos_token_id
    # the saved tokenizer carries our template: it renders exactly what training saw (Qwen2.5's default system,
    # taken from the model folder's own template)
    import chat_template
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat_template.render(
        messages, "qwen", add_generation_prompt=True,
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    record = json.loads((out / "dojo_run.json").read_text())
    assert record["template_name"] == "qwen"
    assert record["template"]["mask"].startswith("generation markers")


def test_instrument_sees_the_trainer_and_every_micro_batch_before_training(tiny_model, toy_data, tmp_path):
    """main(argv, instrument=f) hands f the Trainer before train(): a bench attaches hooks without replacing code."""
    seen = {"steps_at_instrument": None, "micro_batches": 0}

    def instrument(trainer):
        seen["steps_at_instrument"] = trainer.state.global_step
        trainer.micro_batch_hooks.append(lambda inputs, loss: seen.__setitem__("micro_batches",
                                                                              seen["micro_batches"] + 1))

    trainer = main_train.main(train_argv(tiny_model("qwen"), toy_data, tmp_path / "out", "--max_steps", "3",
                                         "--gradient_accumulation_steps", "2"), instrument=instrument)
    assert seen == {"steps_at_instrument": 0, "micro_batches": 6}
    assert trainer.state.global_step == 3


def test_generate_stops_at_end_of_turn(tiny_model, toy_data, tmp_path):
    """A model that learned one answer ends its turn with <|im_end|> and generate stops there."""
    out = tmp_path / "out"
    from tests.conftest import write_jsonl
    data = write_jsonl(tmp_path / "one.jsonl", [{"instruction": "ping", "output": "pong"}] * 8)
    main_train.main(train_argv(tiny_model("qwen"), data, out, "--template_name", "qwen", "--train_mode", "full",
                               "--max_steps", "40", "--learning_rate", "0.03"))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "ping"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    gen = model.generate(**prompt, max_new_tokens=10, do_sample=False)
    new = gen[0, prompt["input_ids"].shape[1]:].tolist()
    assert tok.decode(new) == "pong<|im_end|>"
    # inference.py answers one prompt from the command line and stops at the end of the turn
    import subprocess
    import sys
    from tests.conftest import REPO
    proc = subprocess.run([sys.executable, "inference.py", "--model_name_or_path", str(out), "--prompt", "ping",
                           "--temperature", "0", "--max_new_tokens", "10"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "pong"


def test_qwen_lora_fast_recipe_trains_like_qwen_lora_and_reloads(tiny_model, toy_data, tmp_path):
    """The fast recipe's switches (packed rows, varlen attention, compiled layers, chunked loss, graphs: the plain
    step on CPU, fused AdamW) log the plain recipe's losses, and its adapter reloads in plain peft with the trained
    weights."""
    model_dir = tiny_model("qwen")
    fp32 = ("--bf16", "false")  # compare in fp32: bf16 autocast rounds the two paths differently
    plain = main_train.main(["qwen_lora", *train_argv(model_dir, toy_data, tmp_path / "plain", "--padding_free",
                                                      "true", "--optim", "adamw_torch_fused", *fp32)])
    fast = main_train.main(["qwen_lora_fast", *train_argv(model_dir, toy_data, tmp_path / "fast", *fp32)])
    assert (fast.args.compile_layers, fast.args.cuda_graphs, fast.args.attn_implementation) == (True, True, "varlen")
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, fast)]
    assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    trained = {n: p for n, p in fast.model.named_parameters() if p.requires_grad}  # (varlen needs packed rows)
    reloaded = dict(reload(tmp_path / "fast", model_dir, "lora").named_parameters())
    assert trained and all(torch.equal(reloaded[n], p.detach()) for n, p in trained.items())


def test_seed_fixes_the_adapter_initialisation(tiny_model, tmp_path):
    """The Trainer seeds only once the model exists; build_model seeds first, so LoRA's random A follows --seed
    (and two runs in one process start alike)."""
    from utils.config import parse_args
    from utils.model import apply_peft, build_model

    def lora_a(seed):
        args = parse_args(["qwen_lora", "--model_name_or_path", str(tiny_model("qwen")), "--output_dir",
                           str(tmp_path), "--seed", str(seed), "--bf16", "false"])
        model = apply_peft(build_model(args), args)
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(1), lora_a(1)) and not torch.equal(lora_a(1), lora_a(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_qwen_lora_fast_on_gpu_in_pieces_matches_the_plain_recipe_and_logs_its_peak(tiny_model, toy_data, tmp_path,
                                                                                   capsys, monkeypatch):
    """The README's fast command end to end on a GPU in bf16 (flash varlen attention, compiled layers, CUDA graphs,
    micro-batches run in pieces of 32 tokens): the same losses as the plain recipe within bf16 rounding (rel 2e-2),
    a reloadable adapter, and the measured peak in the log. Every layer is differentiated in training mode, so
    checkpointed (from_pretrained leaves the base model in eval mode under a PeftModel in training mode)."""
    import utils.model
    model_dir = tiny_model("qwen")
    modes, forward = set(), utils.model._checkpointed_forward

    def recorded(layer, *args, **kwargs):
        if torch.is_grad_enabled():  # training (evaluation runs under no_grad)
            modes.add((layer.training, layer.gradient_checkpointing))
        return forward(layer, *args, **kwargs)

    monkeypatch.setattr(utils.model, "_checkpointed_forward", recorded)
    plain = main_train.main(["qwen_lora", *train_argv(model_dir, toy_data, tmp_path / "plain", "--padding_free",
                                                      "true", "--optim", "adamw_torch_fused")])
    fast = main_train.main(["qwen_lora_fast", *train_argv(model_dir, toy_data, tmp_path / "fast",
                                                          "--micro_batch_max_tokens", "32")])
    assert fast.args.bf16 and fast.args.cuda_graphs and fast.args.micro_batch_max_tokens == 32
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, fast)]
    assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=2e-2)
    trained = {n: p.float().cpu() for n, p in fast.model.named_parameters() if p.requires_grad}
    reloaded = dict(reload(tmp_path / "fast", model_dir, "lora").named_parameters())
    assert trained and all(torch.allclose(reloaded[n].float(), p, rtol=1e-2, atol=1e-6) for n, p in trained.items())
    assert "measured peak GPU memory" in capsys.readouterr().out
    assert modes == {(True, True)}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_every_n_layers_checkpoints_every_other_layer_with_the_same_losses(method, tiny_model, toy_data, tmp_path):
    """activation_checkpointing_kwargs every_n_layers 2 (transformers' selective checkpointing) reaches the layers
    through main_train, QLoRA's peft preparation included: layer 0 checkpointed, layer 1 not, the same losses."""
    src, model_dir = tiny_model("qwen"), tmp_path / "two_layers"
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers, config.layer_types = 2, config.layer_types * 2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    for f in src.iterdir():
        if "token" in f.name:
            (model_dir / f.name).write_bytes(f.read_bytes())
    runs = {}
    for name, kwargs in {"all": '{"use_reentrant": false}',
                         "every2": '{"use_reentrant": false, "every_n_layers": 2}'}.items():
        runs[name] = main_train.main(train_argv(model_dir, toy_data, tmp_path / name, "--template_name", "qwen",
                                                *METHODS[method], "--activation_checkpointing_kwargs", kwargs))
    layers = lambda t: [m for m in t.model.modules() if type(m).__name__ == "Qwen2DecoderLayer"]  # noqa: E731
    assert [layer.gradient_checkpointing for layer in layers(runs["all"])] == [True, True]
    assert [layer.gradient_checkpointing for layer in layers(runs["every2"])] == [True, False]
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in runs.values()]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
