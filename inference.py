"""Chat with any model folder (Etude or an open model, with or without a LoRA adapter).

    python inference.py --model_name_or_path DIR [--adapter_path DIR] [--prompt "..."]

Interactive by default: streaming answers, the conversation kept as history, /reset clears it, /exit quits.
The prompt is rendered with the chat template the model was trained with (saved on its tokenizer by main_train.py,
else detected), and generation stops at the template's end-of-turn tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import utils  # noqa: F401  (first: silences harmless library warnings at startup, see utils/__init__.py)
import torch
from transformers import GenerationConfig, TextStreamer

import chat_template
from utils.model_source import load_saved_model
from utils.tokenizer import load_tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python inference.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", required=True, help="model folder (or hub id, online)")
    p.add_argument("--adapter_path", help="PEFT adapter folder written by main_train.py")
    p.add_argument("--template_name", help="chat template; default: the tokenizer's own, else detected")
    p.add_argument("--system", help="system message for the conversation")
    p.add_argument("--prompt", help="answer this one message and exit (non-interactive)")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=0.9)
    p.add_argument("--repetition_penalty", type=float, default=1.1)
    p.add_argument("--trust_remote_code", action="store_true")
    return p.parse_args(argv)


def recorded_stage(*folders) -> str | None:
    for folder in folders:
        if folder and (Path(folder) / "dojo_run.json").is_file():
            return json.loads((Path(folder) / "dojo_run.json").read_text()).get("stage")
        if folder and (Path(folder) / "config.json").is_file():
            stage = json.loads((Path(folder) / "config.json").read_text()).get("training_stage")
            if stage:
                return stage
    return None


def load(args):
    tok_dir = args.adapter_path or args.model_name_or_path
    tokenizer = load_tokenizer(tok_dir, args.trust_remote_code)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = load_saved_model(args.model_name_or_path, dtype=dtype, trust_remote_code=args.trust_remote_code)
    if args.adapter_path:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter_path)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    template = args.template_name
    if template or not tokenizer.chat_template:
        template = template or chat_template.detect(args.model_name_or_path, tokenizer)[0]
        chat_template.apply_to_tokenizer(tokenizer, template)
    return model, tokenizer, stop_ids(args, model, tokenizer, template)


def stop_ids(args, model, tokenizer, template: str | None) -> list[int]:
    """The end-of-turn tokens: of the template when one is named or detected here; else of the run that wrote the
    adapter (its generation_config.json holds the stops of the template it was trained with), not of the base,
    whose generation config may know only end-of-text; else of the model folder (a full fine-tune's own)."""
    if template:
        return chat_template.stop_token_ids(tokenizer, template)
    config = model.generation_config
    if args.adapter_path and (Path(args.adapter_path) / "generation_config.json").is_file():
        config = GenerationConfig.from_pretrained(args.adapter_path)
    stops = config.eos_token_id
    return [stops] if isinstance(stops, int) else list(stops)


@torch.no_grad()
def answer(model, tokenizer, stops, messages, args, stream=True) -> str:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    sample = args.temperature > 0
    out = model.generate(
        **inputs, max_new_tokens=args.max_new_tokens, do_sample=sample, eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
        temperature=args.temperature if sample else None, top_k=args.top_k if sample else None,
        top_p=args.top_p if sample else None, repetition_penalty=args.repetition_penalty,
        streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def main(argv=None):
    args = parse_args(argv)
    if recorded_stage(args.adapter_path, args.model_name_or_path) == "pretrain":
        print("warning: this checkpoint was only pretrained: it continues text, it does not chat. "
              "Fine-tune it with main_train.py first.", file=sys.stderr)
    model, tokenizer, stops = load(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        answer(model, tokenizer, stops, history + [{"role": "user", "content": args.prompt}], args)
        print()
        return
    print("Chat: /reset clears the history, /exit quits.")
    while True:
        try:
            text = input("\nuser> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if text == "/exit":
            break
        if text == "/reset":
            history = history[:1] if args.system else []
            print("(history cleared)")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", flush=True)
        history.append({"role": "assistant", "content": answer(model, tokenizer, stops, history, args)})
        print()


if __name__ == "__main__":
    main()
