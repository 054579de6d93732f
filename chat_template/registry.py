"""The table of chat templates: one row per family, the single source of truth for every template fact.

Each template's text lives in `templates/<name>.jinja`. It is the family's official Hugging Face chat template with
`{% generation %}` markers around what the assistant writes (its content and end-of-turn token), so the same file
serves three uses: rendering, loss masks, and `tokenizer.chat_template` on every saved model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Template:
    name: str
    families: str                     # models it serves, for people
    source: str                       # where the official template comes from
    stop_tokens: tuple[str, ...]      # end-of-turn strings; `generate` must stop on each ("{eos}" = tokenizer eos)
    supports_system: bool = True
    supports_tools: bool = False      # renders `tools` and assistant `tool_calls` the way the official template does
    special_tokens: tuple[str, ...] = ()  # control tokens the template writes (for tokenizers that must add them)
    options: dict = field(default_factory=dict)  # extra render variables the template reads, with their defaults
    # Marker sets: an official chat_template that holds every marker of one set is likely this family (a guess that
    # orders detect's probes; the family matched by the longest set wins, ties by table order)
    detect_markers: tuple[tuple[str, ...], ...] = ()
    model_types: tuple[str, ...] = ()     # config.json model_type values that identify the family
    # Render options of each official variant of the family's template (e.g. Qwen2.5's vs Qwen1.5's default
    # system): a model folder whose chat_template renders like one of them is that family, with those options.
    variants: tuple[dict, ...] = ({},)

    @property
    def jinja(self) -> str:
        return _read_jinja(self.name)

    @property
    def default_system(self) -> str | None:
        """The system message injected when a conversation has none (the `default_system` render option)."""
        return self.options.get("default_system")

    @property
    def bos_in_template(self) -> bool:
        """The template text writes the tokenizer's bos token itself."""
        return "bos_token" in self.jinja

    def stop_token_strings(self, eos_token: str | None) -> list[str]:
        return [eos_token if t == "{eos}" else t for t in self.stop_tokens if t != "{eos}" or eos_token]


@cache
def _read_jinja(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


_TEMPLATES = [
    Template(
        "qwen", "Qwen1.5, Qwen2, Qwen2.5 (chat/instruct)",
        "Qwen2.5-Instruct tokenizer_config.json (Qwen1.5-Chat is the same ChatML without tools)",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), special_tokens=("<|im_start|>", "<|im_end|>"),
        options={"default_system": "You are a helpful assistant."}, supports_tools=True,
        detect_markers=(("<|im_start|>", "Qwen"), ("<|im_start|>", "You are a helpful assistant")),
        model_types=("qwen2", "qwen2_moe", "qwen"),
        variants=({"default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
                  {"default_system": "You are a helpful assistant."},   # Qwen2-Instruct
                  {"default_system": "You are a helpful assistant"}),   # Qwen1.5-Chat
    ),
    Template(
        "qwen3", "Qwen3 (hybrid thinking)", "Qwen3 tokenizer_config.json",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), special_tokens=("<|im_start|>", "<|im_end|>"),
        options={"enable_thinking": True}, supports_tools=True,
        detect_markers=(("<|im_start|>", "<think>", "</think>"),),
        model_types=("qwen3", "qwen3_moe"),
    ),
    Template(
        "yi", "Yi-6B/34B-Chat", "01-ai/Yi-34B-Chat tokenizer_config.json",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), special_tokens=("<|im_start|>", "<|im_end|>"),
        detect_markers=(("<|im_start|>",),), model_types=(),
    ),
    Template(
        "gemma", "Gemma, Gemma-2 (-it)", "google/gemma-2-2b-it tokenizer_config.json",
        stop_tokens=("<end_of_turn>", "<eos>"), supports_system=False,
        special_tokens=("<start_of_turn>", "<end_of_turn>"), detect_markers=(("<start_of_turn>",),),
        model_types=("gemma", "gemma2"),
    ),
    Template(
        "gemma3", "Gemma 3 (-it; text)", "google/gemma-3-*-it chat_template (tests/chat_template/golden/SOURCES.md)",
        stop_tokens=("<end_of_turn>", "<eos>"), special_tokens=("<start_of_turn>", "<end_of_turn>"),
        detect_markers=(("<start_of_turn>", "first_user_prefix"),),
        model_types=("gemma3", "gemma3_text"),
    ),
    Template(
        "phi3", "Phi-3, Phi-3.5 mini/medium instruct", "microsoft/Phi-3.5-mini-instruct tokenizer_config.json",
        stop_tokens=("<|end|>", "<|endoftext|>"),
        special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        detect_markers=(("<|assistant|>", "<|end|>"),), model_types=("phi3",),
    ),
    Template(
        "deepseek", "DeepSeek-LLM 7B/67B chat, DeepSeek-V2 chat",
        "deepseek-ai/DeepSeek-V2-Chat tokenizer_config.json", stop_tokens=("{eos}",),
        detect_markers=(("User: ", "Assistant:"),), model_types=("deepseek_v2",),
    ),
    # No tools for deepseek3: DeepSeek-V3's and R1's official templates have tool branches but no usable tool
    # rendering. Neither writes the tool schemas; neither resets its first-call flags, so a second round of calls
    # loses `<｜Assistant｜><｜tool▁calls▁begin｜>`; V3 leaves a single call unclosed and reaches its call branch only for
    # `content: None`, a key transformers' apply_chat_template drops (tests/chat_template/test_tools.py).
    Template(
        "deepseek3", "DeepSeek-V3, DeepSeek-R1 (and R1 distills' format)",
        "deepseek-ai/DeepSeek-V3 tokenizer_config.json", stop_tokens=("<｜end▁of▁sentence｜>",),
        special_tokens=("<｜User｜>", "<｜Assistant｜>"), detect_markers=(("<｜User｜>",),),
        model_types=("deepseek_v3",),
    ),
    # Meta-Llama-3-8B-Instruct's official template has no tool rendering (Llama-3.1's added one; not here)
    Template(
        "llama3", "Llama-3 / 3.1 instruct", "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json",
        stop_tokens=("<|eot_id|>", "<|end_of_text|>"),
        special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        detect_markers=(("<|start_header_id|>",),), model_types=(),
    ),
    Template(
        "etude", "Etude (this project's GPT)", "defined here (ChatML-shaped)",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), special_tokens=("<|im_start|>", "<|im_end|>"),
        model_types=("etude",),
    ),
]
TEMPLATES: dict[str, Template] = {t.name: t for t in _TEMPLATES}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template_name {name!r}; known: {', '.join(TEMPLATES)}") from None
