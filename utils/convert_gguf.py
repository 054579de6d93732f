"""Turn a GGUF model file into a plain Hugging Face model folder that main_train.py can fine-tune.

    python -m utils.convert_gguf --gguf_file PATH.gguf --output_dir DIR

transformers reads GGUF directly (`from_pretrained(folder, gguf_file=...)`) and dequantizes the weights to float,
but such a model refuses `save_pretrained` ("not serializable") while it carries the GGUF quantization_config. So
the config is stripped of it, a fresh model is built from the config, and the dequantized state dict is moved in.
The tokenizer (with the chat template stored in the GGUF file) is saved beside it. Nothing in the folder is code.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def convert(gguf_file: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the HF folder atomically (a half-written folder never appears under output_dir's name)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, output_dir = Path(gguf_file), Path(output_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"--gguf_file {gguf_file}: no such file")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"--output_dir {output_dir} is not empty")
    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked above
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.convert_gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf_file", required=True, help="the .gguf model file")
    parser.add_argument("--output_dir", required=True, help="where the HF folder goes (must be empty or absent)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="dtype of the written weights (GGUF weights are dequantized to it)")
    a = parser.parse_args(argv)
    try:
        out = convert(a.gguf_file, a.output_dir, getattr(torch, a.dtype))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}: fine-tune it with python main_train.py --model_name_or_path {out} ...")


if __name__ == "__main__":
    main()
