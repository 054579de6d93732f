"""Merge a LoRA/DoRA/QLoRA adapter into its base and write a complete HF model folder.

    python -m utils.merge_lora --adapter_path A --output_dir O [--base_model_path B] [--dtype D] [--force_base]

The base must be the one the adapter was trained on: main_train.py records a fingerprint of its weights in the
adapter's dojo_run.json, and a base with another fingerprint is refused (an adapter on the wrong base of the same
architecture merges without an error, into a model that never was trained). It is loaded unquantized in its own
dtype, or --dtype (for a QLoRA adapter too: merging into 4-bit weights would re-quantize the sum and silently lose
the update). Before writing, the merged model's logits are compared with base+adapter logits on a sample; a
difference beyond tolerance stops the merge and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from transformers import AutoTokenizer, GenerationConfig

from utils.model import DTYPES
from utils.model_source import load_saved_model
from utils.run_folder import check_output_dir
from utils.save import base_fingerprint

# max |merged - adapter| logits, relative to the logits' scale, by dtype of the merge
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
PROBE_TEXT = "Hello! 你好。 The quick brown fox jumps over the lazy dog."


def load_base(path: str, dtype: torch.dtype | str, trust_remote_code: bool = False):
    return load_saved_model(path, dtype=dtype, trust_remote_code=trust_remote_code)


def check_base(adapter_path: str, base_path: str, found: dict | None, force: bool) -> str | None:
    """Refuse (ValueError) a base whose fingerprint (`found`, utils/save.py's base_fingerprint) differs from the one
    recorded at training time, unless forced. Returns a line to print when the base could not be verified or was
    forced, else None."""
    run = Path(adapter_path) / "dojo_run.json"
    recorded = json.loads(run.read_text()).get("base_fingerprint") if run.is_file() else None
    if recorded is None:
        return f"note: {adapter_path} records no fingerprint of its base (trained before they were recorded, or on " \
               f"a base without safetensors files): {base_path} is not verified"
    if found is None:
        return f"note: {base_path} has no safetensors files to fingerprint: the base is not verified"
    if found["sha256"] == recorded["sha256"]:
        return None
    message = (f"base model {base_path} differs from the one the adapter was trained on (weights fingerprint "
               f"{found['sha256'][:12]}, {found['model_type']}; {run} records {recorded['sha256'][:12]}, "
               f"{recorded['model_type']})")
    if not force:
        raise ValueError(f"{message}: pass the adapter's own base as --base_model_path, or --force_base to merge "
                         "into this one anyway")
    return f"warning: {message}; merging anyway (--force_base)"


@torch.no_grad()
def logits_of(model, input_ids):
    return model(input_ids=input_ids).logits.float()


def merge(adapter_path: str, output_dir: str, base_model_path: str | None = None, dtype: str | None = None,
          overwrite: bool = False, trust_remote_code: bool = False, force_base: bool = False) -> float:
    """Returns the max abs logit difference measured before writing. dtype None: the base's own."""
    check_output_dir(argparse.Namespace(output_dir=output_dir, overwrite_output_dir=overwrite,
                                        resume_from_checkpoint=None))
    peft_config = PeftConfig.from_pretrained(adapter_path)
    base_path = base_model_path or peft_config.base_model_name_or_path
    fingerprint = base_fingerprint(base_path)
    if note := check_base(adapter_path, base_path, fingerprint, force_base):
        print(note, file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(adapter_path)
    input_ids = tokenizer(PROBE_TEXT, return_tensors="pt").input_ids

    base = load_base(base_path, DTYPES[dtype] if dtype else "auto", trust_remote_code)  # auto: the checkpoint's
    torch_dtype = base.dtype
    if torch_dtype not in TOLERANCE:
        raise ValueError(f"base {base_path} is {torch_dtype}: pass --dtype, one of {list(DTYPES)}")
    model = PeftModel.from_pretrained(base, adapter_path)
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
        record.update(train_mode="full (merged)", merged_from=str(adapter_path), base_model=str(base_path),
                      base_fingerprint=fingerprint)  # the base actually merged into
        (out / "dojo_run.json").write_text(json.dumps(record, indent=2))
    return diff


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.merge_lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter_path", required=True, help="adapter folder written by main_train.py")
    parser.add_argument("--output_dir", required=True, help="where the merged model goes (must be empty)")
    parser.add_argument("--base_model_path", help="unquantized base; default: the one recorded in the adapter")
    parser.add_argument("--dtype", choices=list(DTYPES), help="dtype of the merged weights; default: the base's own")
    parser.add_argument("--force_base", action="store_true",
                        help="merge into a base whose weights differ from the one the adapter was trained on")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="allow a non-empty output_dir")
    parser.add_argument("--trust_remote_code", action="store_true", help="run code from the base model folder")
    a = parser.parse_args(argv)
    try:
        diff = merge(a.adapter_path, a.output_dir, a.base_model_path, a.dtype, a.overwrite_output_dir,
                     a.trust_remote_code, a.force_base)
    except (FileExistsError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"merged into {a.output_dir} (max |logit diff| vs adapter: {diff:.3g})")


if __name__ == "__main__":
    main()
