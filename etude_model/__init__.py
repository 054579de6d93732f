"""Etude: the project's own small GPT, trainable end to end (tokenizer, pretraining, SFT).

Importing this package registers the "etude" model type with the transformers Auto classes,
so `AutoModelForCausalLM.from_pretrained(checkpoint_dir)` works without trust_remote_code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .modeling_etude import EtudeConfig, EtudeForCausalLM, EtudeModel
from .presets import PRESETS, count_parameters, make_config
from .tokenizer import (
    CHAT_TEMPLATE,
    build_etude_tokenizer,
    check_vocab,
    load_etude_tokenizer,
    padded_vocab_size,
)

AutoConfig.register("etude", EtudeConfig, exist_ok=True)
AutoModel.register(EtudeConfig, EtudeModel, exist_ok=True)
AutoModelForCausalLM.register(EtudeConfig, EtudeForCausalLM, exist_ok=True)

__all__ = [
    "EtudeConfig", "EtudeModel", "EtudeForCausalLM", "PRESETS", "make_config", "count_parameters",
    "build_etude_tokenizer", "load_etude_tokenizer", "check_vocab", "padded_vocab_size", "CHAT_TEMPLATE",
]
