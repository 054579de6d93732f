"""qwen + lora on the fast path that bench/README.md measures on one GPU: samples packed into one row with flash
variable-length attention, compiled decoder layers, a chunked loss (no full-vocabulary logits), each micro-batch's
forward + backward replayed as a CUDA graph, and fused AdamW. The same losses and gradients as qwen_lora (CPU
tests); the first steps compile the layer and capture one graph per padded row length (a one-time cost).

Run: python main_train.py qwen_lora_fast --model_name_or_path /path/to/local/model --train_data_path data/my.jsonl
     add --memory_budget_gb 18 to fit the predicted peak in 18 GB: fewer recomputed layers where memory allows,
     or a cap on each forward's tokens where it does not
"""
from dataclasses import dataclass

from train_args.qwen_lora import QwenLoraArgs


@dataclass
class QwenLoraFastArgs(QwenLoraArgs):
    output_dir: str = "output/qwen_lora_fast"
    padding_free: bool = True
    attn_implementation: str = "varlen"
    compile_layers: bool = True
    chunked_loss: bool = True
    cuda_graphs: bool = True
    optim: str = "adamw_torch_fused"
    lora_dropout: float = 0.0  # no random masks: a graph replay needs no RNG state, the recompute none either
    fused_lora: bool = True    # the adapter added in place: less peak memory, no slower (bench/README.md)
