"""One door from `model_name_or_path` to a model: a preset of a from-scratch family, or a folder (or hub id).

    source = resolve_model_source("etude-tiny")      # ModelSource(kind="preset", family=ETUDE, ...)
    tokenizer = source.load_tokenizer()
    model = source.load_model(torch.float32, vocab_size=len(tokenizer))

A preset family is a model type this project builds from scratch (fresh random weights, its own tokenizer and chat
template). Adding one is one `register(PresetFamily(...))` call below; nothing else in utils/ names a family. Importing
this module registers every family's model type with the transformers Auto classes, so a folder it saved loads
with `load_saved_model` (or AutoModelForCausalLM) without trust_remote_code.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from transformers import AutoConfig, AutoModelForCausalLM

from chat_template.loading import load_tokenizer_folder


@dataclass(frozen=True)
class PresetFamily:
    """Models built from scratch by preset name."""
    name: str                                   # shown in logs ("Etude preset")
    presets: Collection[str]
    make_config: Callable[[str, int | None], object]  # (preset, tokenizer size or None: the preset's own vocab)
    model_class: type                            # built as model_class(config): fresh random weights
    load_tokenizer: Callable[[], object]         # the tokenizer a preset starts from
    template: str                                # its chat template (chat_template/templates/)


FAMILIES: list[PresetFamily] = []


def register(family: PresetFamily) -> None:
    """Make a family's presets valid values of model_name_or_path (and tokenizer_name_or_path)."""
    taken = {p for f in FAMILIES for p in f.presets} & set(family.presets)
    if taken:
        raise ValueError(f"preset names {sorted(taken)} are already registered")
    FAMILIES.append(family)


@dataclass(frozen=True)
class ModelSource:
    name_or_path: str
    kind: Literal["preset", "folder"]  # folder: a local folder or a hub id
    trust_remote_code: bool = False
    family: PresetFamily | None = None  # set for a preset

    @property
    def from_scratch(self) -> bool:
        """Random weights: every embedding starts untrained, so new tokens cost nothing and adapters make no sense."""
        return self.kind == "preset"

    @property
    def template(self) -> str | None:
        """The chat template a preset is trained with; None: detect it from the folder's tokenizer."""
        return self.family.template if self.family else None

    def config(self, vocab_size: int | None = None):
        """The model config. A preset's vocabulary is sized to the tokenizer (vocab_size); a folder's is its own."""
        if self.family:
            return self.family.make_config(self.name_or_path, vocab_size)
        return AutoConfig.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)

    def load_tokenizer(self):
        if self.family:
            return self.family.load_tokenizer()
        return load_tokenizer_folder(self.name_or_path, self.trust_remote_code)

    def load_model(self, dtype, vocab_size: int | None = None, **from_pretrained_kwargs):
        """A preset: fresh weights in dtype (from_pretrained_kwargs such as attn_implementation do not apply).
        A folder: its weights, with from_pretrained_kwargs (attn_implementation, quantization_config)."""
        if self.family:
            return self.family.model_class(self.config(vocab_size)).to(dtype)
        return load_saved_model(self.name_or_path, dtype=dtype, trust_remote_code=self.trust_remote_code,
                                **from_pretrained_kwargs)


def resolve_model_source(name_or_path: str, trust_remote_code: bool = False) -> ModelSource:
    for family in FAMILIES:
        if name_or_path in family.presets:
            return ModelSource(name_or_path, "preset", trust_remote_code, family)
    return ModelSource(name_or_path, "folder", trust_remote_code)


def load_saved_model(path: str, **kwargs):
    """A causal LM with its weights from a folder (or hub id); a registered family's folder needs no remote code."""
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _etude() -> PresetFamily:
    import etude_model  # registers the "etude" model type with the Auto classes

    def make_config(preset: str, vocab_size: int | None):
        sized = {} if vocab_size is None else {"vocab_size": etude_model.padded_vocab_size(vocab_size)}
        return etude_model.make_config(preset, **sized)
    return PresetFamily("Etude", etude_model.PRESETS, make_config, etude_model.EtudeForCausalLM,
                        etude_model.build_etude_tokenizer, "etude")


register(_etude())
