"""utils/merge_lora.py merges an adapter only into the base it was trained on, in the base's own dtype, and the merged
model gives the adapter's logits (a QLoRA adapter merges into the unquantized base)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import main_train
from tests.conftest import TOY_RECORDS, build_tiny_model, train_argv, write_jsonl
from utils.merge_lora import main as merge_main
from utils.save import base_fingerprint


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter trained on the tiny Qwen2 base (fp32 on disk)."""
    tmp = tmp_path_factory.mktemp("adapter")
    data = write_jsonl(tmp / "toy.jsonl", TOY_RECORDS)
    main_train.main(train_argv(tiny_model("qwen"), data, tmp / "ad", "--template_name", "qwen", "--max_steps", "2"))
    return tmp / "ad"


def merged_dtypes(folder) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(name)[:1].dtype for name in f.keys()}


def test_adapter_records_the_fingerprint_of_its_base(adapter, tiny_model):
    record = json.loads((adapter / "dojo_run.json").read_text())
    assert record["base_fingerprint"] == base_fingerprint(str(tiny_model("qwen")))
    assert record["base_fingerprint"]["model_type"] == "qwen2" and len(record["base_fingerprint"]["sha256"]) == 64


def test_fingerprint_is_the_weights_not_their_files_dtype_or_shards(tiny_model, tmp_path):
    """The same weights re-saved in shards, and a bf16 base up-cast to fp32, keep the fingerprint; one changed
    weight does not."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model("qwen"), dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    model.float().save_pretrained(tmp_path / "fp32_shards", max_shard_size="100KB")
    assert len(list((tmp_path / "fp32_shards").glob("*.safetensors"))) > 1
    assert base_fingerprint(str(tmp_path / "bf16")) == base_fingerprint(str(tmp_path / "fp32_shards"))
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight[0, 0] += 1
    model.save_pretrained(tmp_path / "changed")
    assert base_fingerprint(str(tmp_path / "changed")) != base_fingerprint(str(tmp_path / "fp32_shards"))


def test_merge_refuses_another_base_of_the_same_architecture(adapter, tmp_path, capsys):
    """Another random Qwen2 of the same shape would merge without a logit mismatch: refused unless forced."""
    other = build_tiny_model("qwen", tmp_path / "other_base", seed=1)
    argv = ["--adapter_path", str(adapter), "--base_model_path", str(other), "--output_dir", str(tmp_path / "m")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        merge_main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: base model") and "differs from the one the adapter was trained on" in err
    assert not (tmp_path / "m").exists()  # nothing written
    merge_main(argv + ["--force_base"])
    assert "merging anyway (--force_base)" in capsys.readouterr().err
    record = json.loads((tmp_path / "m" / "dojo_run.json").read_text())
    assert record["base_model"] == str(other) and record["base_fingerprint"] == base_fingerprint(str(other))


def test_merge_keeps_the_bases_own_dtype_by_default(adapter, tmp_path):
    """An fp32 base merges to fp32 (--dtype chooses another)."""
    merge_main(["--adapter_path", str(adapter), "--output_dir", str(tmp_path / "m")])
    assert merged_dtypes(tmp_path / "m") == {torch.float32}


def test_merge_matches_adapter_logits(tiny_model, toy_data, tmp_path):
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    from utils.merge_lora import main as merge_main
    model_dir = tiny_model("qwen")
    main_train.main(train_argv(model_dir, toy_data, tmp_path / "ad", "--template_name", "qwen"))
    merge_main(["--adapter_path", str(tmp_path / "ad"), "--output_dir", str(tmp_path / "m"), "--dtype", "float32"])
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        adapter = PeftModel.from_pretrained(base, tmp_path / "ad")(input_ids=ids).logits
    assert (merged - adapter).abs().max() < 1e-4
    assert (tmp_path / "m" / "generation_config.json").is_file()


def test_qlora_adapter_merges_into_the_unquantized_base(tiny_model, toy_data, tmp_path):
    from utils.merge_lora import merge
    model_dir = tiny_model("qwen")
    main_train.main(train_argv(model_dir, toy_data, tmp_path / "ad", "--template_name", "qwen",
                               "--train_mode", "qlora"))
    diff = merge(str(tmp_path / "ad"), str(tmp_path / "m"), dtype="float32")
    assert diff < 1e-4
    from transformers import AutoConfig
    assert getattr(AutoConfig.from_pretrained(tmp_path / "m"), "quantization_config", None) is None

