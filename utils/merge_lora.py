"""Merge a LoRA/DoRA/QLoRA adapter into its base and write a complete HF model folder.

    python -m utils.merge_lora --adapter_path A --output_dir O [--base_model_path B] [--dtype bfloat16]

The base is loaded unquantized in 16-bit (for a QLoRA adapter too: merging into 4-bit weights would re-quantize
the sum and silently lose the update). Before writing, the merged model's logits are compared with base+adapter
logits on a sample; a difference beyond tolerance stops the merge and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from utils.model import DTYPES
from utils.run_folder import check_output_dir

# max |merged - adapter| logits, relative to the logits' scale, by dtype of the merge
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
PROBE_TEXT = "Hello! 你好。 The quick brown fox jumps over the lazy dog."


def load_base(path: str, dtype: torch.dtype, trust_remote_code: bool = False):
    import etude_model  # noqa: F401  (registers Etude with the Auto classes)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)


@torch.no_grad()
def logits_of(model, input_ids):
    return model(input_ids=input_ids).logits.float()


def merge(adapter_path: str, output_dir: str, base_model_path: str | None = None, dtype: str = "bfloat16",
          overwrite: bool = False, trust_remote_code: bool = False) -> float:
    """Returns the max abs logit difference measured before writing."""
    check_output_dir(argparse.Namespace(output_dir=output_dir, overwrite_output_dir=overwrite,
                                        resume_from_checkpoint=None))
    torch_dtype = DTYPES[dtype]
    peft_config = PeftConfig.from_pretrained(adapter_path)
    base_path = base_model_path or peft_config.base_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(adapter_path)
    input_ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids

    model = PeftModel.from_pretrained(load_base(base_path, torch_dtype, trust_remote_code), adapter_path)
    model.eval()
    expected = logits_of(model, input_ids)
    merged = model.merge_and_unload()
    got = logits_of(merged, input_ids)
    diff = (got - expected).abs().max().item()
    scale = expected.abs().max().item() or 1.0
    if not diff <= TOLERANCE[torch_dtype] * max(1.0, scale):
        raise RuntimeError(f"merged logits differ from base+adapter by {diff:.3g} (tolerance "
                           f"{TOLERANCE[torch_dtype]} x scale {scale:.3g}); nothing written")

    out = Path(output_dir)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    generation = Path(adapter_path) / "generation_config.json"
    if generation.is_file():
        GenerationConfig.from_pretrained(adapter_path).save_pretrained(out)
    run = Path(adapter_path) / "dojo_run.json"
    if run.is_file():
        record = json.loads(run.read_text())
        record.update(train_mode="full (merged)", merged_from=str(adapter_path))
        (out / "dojo_run.json").write_text(json.dumps(record, indent=2))
    return diff


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.merge_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter_path", required=True, help="adapter folder written by main_train.py")
    parser.add_argument("--output_dir", required=True, help="where the merged model goes (must be empty)")
    parser.add_argument("--base_model_path", help="unquantized base; default: the one recorded in the adapter")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="dtype of the merged weights")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="allow a non-empty output_dir")
    parser.add_argument("--trust_remote_code", action="store_true", help="run code from the base model folder")
    a = parser.parse_args(argv)
    try:
        diff = merge(a.adapter_path, a.output_dir, a.base_model_path, a.dtype, a.overwrite_output_dir,
                     a.trust_remote_code)
    except (FileExistsError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"merged into {a.output_dir} (max |logit diff| vs adapter: {diff:.3g})")


if __name__ == "__main__":
    main()
