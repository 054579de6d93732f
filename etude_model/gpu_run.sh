#!/usr/bin/env bash
# The real Etude run on one GPU: train a 16k byte-level BPE on the zh+en corpus, pretrain etude-small on it,
# SFT through main_train.py (etude template, loss on assistant tokens), then chat with inference.py.
# Usage: bash etude_model/gpu_run.sh ASSETS OUT   (ASSETS holds pretrain/, sft/, multiturn/ from ../shared/assets/data)
set -euo pipefail
A=${1:-.device_assets}; OUT=${2:-runs/etude_gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=runs/etude_gpu_work; rm -rf "$W"; mkdir -p "$W"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
time python3 -m etude_model.train_tokenizer --data "$A/pretrain" --vocab_size 16000 --text_split line \
  --output_dir "$W/tok"
time python3 -m etude_model.pretrain --preset etude-small --tokenizer "$W/tok" --data "$A/pretrain" --text_split line \
  --block_size 512 --batch_size 64 --max_steps 800 --warmup_steps 50 --lr 1e-3 --min_lr 1e-4 --eval_every 100 \
  --eval_iters 20 --log_every 50 --save_every 100000 --compile --no_progress --output_dir "$W/pretrain" \
  --cache_dir "$W/cache" 2>&1 | tee "$OUT/pretrain.log"
time python3 main_train.py --model_name_or_path "$W/pretrain" --template_name etude --train_mode full \
  --train_data_path "$A/sft" "$A/multiturn" --invalid_records skip --max_len 512 --eval_ratio 0.03 \
  --learning_rate 3e-4 --num_train_epochs 3 --per_device_train_batch_size 16 --gradient_accumulation_steps 1 \
  --activation_checkpointing false --save_steps 100000 --eval_steps 100 --logging_steps 20 --report_to none \
  --disable_tqdm true --output_dir "$W/sft" 2>&1 | tee "$OUT/sft.log"
for p in "你好，请介绍一下你自己。" "什么是光合作用？" "Give three tips for staying healthy." \
         "Translate to English: 今天天气很好。" "宝玉和黛玉是什么关系？"; do
  echo "### user: $p"; python3 inference.py --model_name_or_path "$W/sft" --prompt "$p" --temperature 0.7 \
    --top_p 0.9 --max_new_tokens 120 2>/dev/null; echo
done 2>&1 | tee "$OUT/chats.txt"
python3 inference.py --model_name_or_path "$W/pretrain" --prompt "话说宝玉" --max_new_tokens 60 --temperature 0.8 \
  2>&1 | tail -3 | tee -a "$OUT/chats.txt"
cp "$W/pretrain/loss_curve.png" "$OUT/pretrain_loss.png"; cp "$W/sft/loss_curve.png" "$OUT/sft_loss.png"
cp "$W/pretrain/loss_log.jsonl" "$OUT/pretrain_loss_log.jsonl" 2>/dev/null || true
