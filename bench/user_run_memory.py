"""`python main_train.py ...` with bench/memory_peak.py's report: where the training peak of a user's run goes.

    python bench/user_run_memory.py qwen_lora_fast --model_name_or_path DIR --train_data_path data.jsonl \
        --cuda_graphs false --max_steps 6 ...

Recording starts where main_train starts its measured peak (just before train()), so the report and the logged
"measured peak GPU memory in training" cover the same span; the allocations alive before it (weights, adapters) are
the baseline. PyTorch's allocator history does not follow CUDA-graph captures: run with --cuda_graphs false.
Keep --max_steps small: the history holds the last 400,000 allocator events.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

import main_train  # noqa: E402
import memory_peak  # noqa: E402  (bench/memory_peak.py, beside this file)

baseline = None


def reset_and_record() -> None:
    global baseline
    torch.cuda.reset_peak_memory_stats()
    baseline = memory_peak.start()


if __name__ == "__main__":
    if torch.cuda.is_available():
        main_train.reset_measured_peak = reset_and_record  # the name main_train calls before train()
    main_train.main(sys.argv[1:])
    print(memory_peak.report(baseline) if baseline is not None else "no CUDA: no memory report")
