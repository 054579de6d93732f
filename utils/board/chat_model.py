"""Load a result to chat with, and stream its answer until the template's end of turn.

A folder is a model (config.json) or a LoRA adapter (adapter_config.json: its base model is loaded under it). The
template is the one main_train.py recorded in dojo_run.json, else detected as main_train detects it; the stop
tokens are the template's (chat_template.stop_token_ids) and those of the folder's own generation_config.json,
which main_train.py writes with every stop token of the template.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, TextIteratorStreamer

import chat_template
from utils.model_source import load_saved_model
from utils.tokenizer import load_tokenizer


@dataclass
class ChatModel:
    folder: str
    model: object
    tokenizer: object
    template_name: str
    stops: list[int]

    def render(self, messages: list[dict]) -> tuple[str, int]:
        """The exact prompt text the model is given, and its token count."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, len(self.prompt_ids(messages)[0])

    def prompt_ids(self, messages):
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def base_of(folder: Path) -> str | None:
    """The base model under an adapter folder (None for a model folder)."""
    if not (folder / "adapter_config.json").is_file():
        return None
    return _json(folder / "dojo_run.json").get("base_model") or \
        _json(folder / "adapter_config.json")["base_model_name_or_path"]


def load(folder: str, trust_remote_code: bool = False) -> ChatModel:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    base = base_of(path)
    tokenizer = load_tokenizer(str(path), trust_remote_code)  # main_train saves the tokenizer it trained with
    template = _json(path / "dojo_run.json").get("template_name") or \
        chat_template.detect(base or str(path), tokenizer)[0]
    chat_template.apply_to_tokenizer(tokenizer, template)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = load_saved_model(base or str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    if base:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(path))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    stops = chat_template.stop_token_ids(tokenizer, template)
    if (path / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
        stops += [t for t in ([eos] if isinstance(eos, int) else eos or []) if t not in stops]
    return ChatModel(str(path), model, tokenizer, template, stops)


def stream_answer(chat: ChatModel, messages, temperature: float, top_p: float, max_new_tokens: int):
    """Yield (text so far, None) while generating, then (text, why it stopped)."""
    ids = chat.prompt_ids(messages).to(chat.model.device)
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
    sample = temperature > 0
    result = {}

    def generate():
        try:
            result["ids"] = chat.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
                top_k=None, eos_token_id=chat.stops, streamer=streamer,
                pad_token_id=chat.tokenizer.pad_token_id if chat.tokenizer.pad_token_id is not None else chat.stops[0])
        except Exception as err:  # shown on the page; the streamer must still end or the page waits forever
            result["error"] = err
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text, None
    thread.join()
    if "error" in result:
        raise result["error"]
    new = result["ids"][0, ids.shape[1]:].tolist()
    if new and new[-1] in chat.stops:
        reason = f"end of turn ({chat.tokenizer.convert_ids_to_tokens(new[-1])})"
    else:
        reason = f"max_new_tokens ({max_new_tokens}) reached without an end of turn"
    yield text, f"{len(new)} new tokens; stopped at {reason}"
