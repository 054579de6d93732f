"""A small random model of a family's architecture, saved with the family's real tokenizer: every command of this
project (main_train, inference, merge) runs on it in seconds on a CPU, to try things before a real model.

    python -m utils.tiny_model --family qwen --tokenizer DIR --output_dir DIR [--hidden_size 16] [--num_layers 1]

DIR of --tokenizer is any folder with the family's tokenizer (a downloaded model folder will do). The weights are
random: the loss falls and the files are real, but the answers are noise. The tests build theirs with this too.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# family (each has a ready config train_args/<family>_lora.py) -> transformers config class of its architecture
ARCHITECTURES = {"qwen": "Qwen2Config", "qwen3": "Qwen3Config", "yi": "LlamaConfig", "gemma": "GemmaConfig",
                 "phi3": "Phi3Config", "deepseek": "LlamaConfig"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def build_tiny_model(family: str, tokenizer_dir: str | Path, output_dir: str | Path, seed: int = 0,
                     hidden_size: int = 16, num_layers: int = 1) -> Path:
    """Write the model and a copy of the tokenizer's files to output_dir (which must be empty or absent)."""
    import torch
    import transformers

    from utils.tokenizer import load_tokenizer

    if family not in ARCHITECTURES:
        raise ValueError(f"--family must be one of {', '.join(ARCHITECTURES)}, got {family!r}")
    tokenizer_dir, output_dir = Path(tokenizer_dir), Path(output_dir)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"--tokenizer {tokenizer_dir}: no tokenizer_config.json in that folder")
    if hidden_size % 8 or hidden_size < 16:
        raise ValueError(f"--hidden_size must be a multiple of 8 and >= 16, got {hidden_size}")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"--output_dir {output_dir} is not empty")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, output_dir / name)
    tokenizer = load_tokenizer(str(output_dir))
    config_class = getattr(transformers, ARCHITECTURES[family])
    heads = hidden_size // 8
    config = config_class(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=8,
        max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = getattr(transformers, ARCHITECTURES[family].replace("Config", "ForCausalLM"))(config)
    model.save_pretrained(output_dir)
    return output_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--tokenizer", required=True, help="folder with the family's tokenizer files")
    parser.add_argument("--output_dir", required=True, help="where the model goes (must be empty or absent)")
    parser.add_argument("--hidden_size", type=int, default=16)
    parser.add_argument("--num_layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    try:
        out = build_tiny_model(a.family, a.tokenizer, a.output_dir, a.seed, a.hidden_size, a.num_layers)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}: try python main_train.py {a.family}_lora --model_name_or_path {out} "
          f"--train_data_path data/skills/train.jsonl --max_len 128 --max_steps 20 --output_dir output/tiny-{a.family}")


if __name__ == "__main__":
    main()
