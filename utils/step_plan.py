"""The step plan: what runs in every training step, resolved once from the args and the model's config.

The fast-path fields of train_args/base.py are switches; this file turns them into one frozen StepPlan:

    collator      plain (pad to the longest sample), padding_free (one packed row per micro-batch) or bucketed
                  (packed rows padded to a multiple of cuda_graph_bucket tokens); with max_tokens > 0 a longer
                  micro-batch is also cut into pieces of at most max_tokens tokens
    loss_backend  model (the model's own forward computes the loss), liger_fused (the same forward, into which the
                  Trainer patches liger-kernel's fused linear cross-entropy: use_liger_kernel) or chunked
                  (utils/loss.py: the logits never exist)
    step_runner   plain (the Trainer's forward + backward), pieces (one forward + backward per piece) or cuda_graph
                  (utils/cuda_graphs.py: each micro-batch, or each piece, replayed as a CUDA graph)
    derived       the Trainer settings these choices imply, each with its reason. They are applied to the
                  Trainer's copy of the args in one place (DojoTrainer), logged and saved in step_plan.json, and
                  never written back into the fields a user gave.

SWITCH_RULES says which switches go together (checked with every other field, all bad fields at once), and
MODEL_CAPABILITIES says what each model type supports. The trainer, the memory estimate and the bench read the
plan instead of the switches. A new switch: its field, its rules and its place in `resolve` here, its module, its
test. A new model type: one row of MODEL_CAPABILITIES and a test.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

VARLEN = "varlen"  # utils/attention.py's attn_implementation name
COLLATORS = ("plain", "padding_free", "bucketed")
LOSS_BACKENDS = ("model", "liger_fused", "chunked")
STEP_RUNNERS = ("plain", "pieces", "cuda_graph")


# --- what each model type supports -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """padding_free: its attention separates packed samples by restarting position ids (transformers builds the
    block-diagonal mask from them). chunked_loss: its logits are the output head's, at most soft-capped, so the
    chunked loss is its own loss (others scale or shift them: Cohere's logit_scale, Granite's logits_scaling).
    softcap: it soft-caps its logits (final_logit_softcapping), which the chunked loss applies too. aux_loss: where
    its load-balancing loss is added: "decoder" (its decoder's output carries aux_loss: every backend adds it) or
    "causal_lm" (transformers' MoE models, with output_router_logits: only the causal-LM forward adds it, so only
    the model's own loss has it)."""
    padding_free: bool = False
    chunked_loss: bool = False
    softcap: bool = False
    aux_loss: str | None = None


MODEL_CAPABILITIES = {
    "qwen2": Capabilities(padding_free=True, chunked_loss=True),
    "qwen3": Capabilities(padding_free=True, chunked_loss=True),
    "qwen2_moe": Capabilities(padding_free=True, chunked_loss=True, aux_loss="causal_lm"),
    "qwen3_moe": Capabilities(chunked_loss=True, aux_loss="causal_lm"),
    "llama": Capabilities(padding_free=True, chunked_loss=True),
    "mistral": Capabilities(padding_free=True, chunked_loss=True),
    "gemma": Capabilities(padding_free=True, chunked_loss=True),
    "gemma2": Capabilities(padding_free=True, chunked_loss=True, softcap=True),
    "gemma3_text": Capabilities(chunked_loss=True, softcap=True),
    "phi3": Capabilities(padding_free=True, chunked_loss=True),
    "etude": Capabilities(chunked_loss=True, aux_loss="decoder"),
}


def supporting(capability: str) -> tuple[str, ...]:
    return tuple(t for t, caps in MODEL_CAPABILITIES.items() if getattr(caps, capability))


def capability_problems(config, padding_free: bool = False, chunked_loss: bool = False) -> list[str]:
    """'field: why this model cannot' for each switch the model's type does not support."""
    model_type = getattr(config, "model_type", None)
    caps = MODEL_CAPABILITIES.get(model_type, Capabilities())
    found = []
    if padding_free and not caps.padding_free:
        found.append(f"padding_free: needs a model whose attention separates packed samples by position ids; "
                     f"{model_type!r} is not among {supporting('padding_free')}")
    if chunked_loss and not caps.chunked_loss:
        found.append(f"chunked_loss: reproduces the loss of models whose logits are the output head's "
                     f"({', '.join(supporting('chunked_loss'))}); {model_type!r} is not among them: set chunked_loss "
                     "false")
    elif chunked_loss and getattr(config, "final_logit_softcapping", None) and not caps.softcap:
        found.append(f"chunked_loss: {model_type!r} soft-caps its logits, which its capabilities do not declare")
    elif chunked_loss and caps.aux_loss == "causal_lm" and getattr(config, "output_router_logits", False):
        found.append("chunked_loss: cannot add the router load-balancing loss that output_router_logits adds to "
                     "this transformers MoE model's loss: set chunked_loss false (the model's own loss adds it), "
                     "or output_router_logits false in the model's config")
    return found


# --- which switches go together ----------------------------------------------------------------------------------
ONE_PROCESS = "runs in one process only, not under torchrun (use use_liger_kernel for the loss and " \
              "per_device_train_batch_size for memory there)"

# (field, when its value is valid given the other switches and the world size, the rule in words)
SWITCH_RULES = (
    ("attn_implementation", lambda a, world: a.attn_implementation != VARLEN or a.padding_free,
     "varlen needs padding_free true (it reads the packed samples' boundaries from the padding-free collator)"),
    ("cuda_graphs", lambda a, world: not a.cuda_graphs or (a.padding_free and a.attn_implementation == VARLEN),
     "needs padding_free true and attn_implementation varlen (a graph must run without host synchronisation, "
     "which the mask-building attention paths do)"),
    ("fp16", lambda a, world: not (a.cuda_graphs and a.fp16),
     "cuda_graphs does not support fp16 loss scaling: use bf16"),
    ("cuda_graph_bucket", lambda a, world: a.cuda_graph_bucket >= 1, "must be >= 1"),
    ("micro_batch_max_tokens", lambda a, world: a.micro_batch_max_tokens == 0 or (
        a.micro_batch_max_tokens > 0 and a.padding_free), "must be >= 0 and needs padding_free true (pieces are "
     "packed rows)"),
    ("memory_budget_gb", lambda a, world: a.memory_budget_gb == 0 or (a.memory_budget_gb > 0 and a.padding_free),
     "must be >= 0 and needs padding_free true (it chooses micro_batch_max_tokens)"),
    ("stage", lambda a, world: a.stage == "sft" or not (a.cuda_graphs or a.micro_batch_max_tokens or a.memory_budget_gb
                                                         or (a.padding_free or a.chunked_loss) and not _dpo_loss(a)),
     "padding_free and chunked_loss serve stage sft and stage dpo with a DPO loss (its log-probs are always computed "
     "chunk by chunk); cuda_graphs, micro_batch_max_tokens and memory_budget_gb are SFT fast paths"),
    ("cuda_graphs", lambda a, world: not a.cuda_graphs or world == 1, ONE_PROCESS),
    ("chunked_loss", lambda a, world: not a.chunked_loss or world == 1, ONE_PROCESS),
    ("micro_batch_max_tokens", lambda a, world: not a.micro_batch_max_tokens or world == 1,
     ONE_PROCESS + "; memory_budget_gb sets it"),
)


def _dpo_loss(a) -> bool:
    """Stage dpo with one of DPOTrainer's losses: its fast path packs chosen and rejected (utils/preference_fast.py)."""
    from train_args.base import DPO_LOSSES
    return a.stage == "dpo" and a.pref_loss in DPO_LOSSES


def launched_world_size() -> int:
    """The process count torchrun (or accelerate) launched, before the Trainer's device setup reads it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def switch_problems(args, world_size: int | None = None) -> list[str]:
    """'field: rule, got value' for every broken rule of SWITCH_RULES."""
    world = launched_world_size() if world_size is None else world_size
    found = []
    for name, valid, rule in SWITCH_RULES:
        try:
            ok = valid(args, world)
        except TypeError:  # e.g. None where a number is expected
            ok = False
        if not ok:
            found.append(f"{name}: {rule}, got {getattr(args, name)!r}")
    return found


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


# --- the plan ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Derived:
    """A Trainer setting the plan chooses: applied to the Trainer's args only, with the reason it is logged with."""
    field: str
    value: object
    reason: str


@dataclass(frozen=True)
class StepPlan:
    collator: str = "plain"
    varlen: bool = False          # the collator also emits sample boundaries for varlen attention
    bucket: int = 0               # bucketed: rows padded to a multiple of this many tokens
    max_tokens: int = 0           # > 0: a longer micro-batch is run in pieces of at most this many tokens
    loss_backend: str = "model"
    step_runner: str = "plain"
    model_type: str | None = None
    offload: bool = False         # checkpointed layers' inputs wait in host memory (utils/offload.py)
    derived: tuple[Derived, ...] = ()

    @property
    def padding_free(self) -> bool:
        return self.collator != "plain"

    def describe(self) -> str:
        """The one line a run logs."""
        collator = self.collator + (f" ({self.bucket} tokens)" if self.bucket else "") + (
            ", varlen boundaries" if self.varlen else "") + (
            f", pieces of <= {self.max_tokens} tokens" if self.max_tokens else "") + (
            f" (each padded to a multiple of {self.bucket})" if self.max_tokens and self.bucket
            and self.max_tokens % self.bucket else "")
        derived = "; ".join(f"{d.field} {d.value!r} ({d.reason})" for d in self.derived) or "none"
        runner = self.step_runner
        if runner == "cuda_graph" and not _cuda_available():  # the plan is the config's; say what runs here
            runner += " (no CUDA device here: each micro-batch runs the plain step, with the same losses)"
        if self.offload:
            runner += ", checkpointed layers' inputs in host memory"
        return (f"collator {collator}; loss backend {self.loss_backend}; step runner {runner}; "
                f"derived Trainer settings: {derived}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, output_dir) -> None:
        """step_plan.json in the run folder: what the run's steps were, next to train_args.json (what was given)."""
        (Path(output_dir) / "step_plan.json").write_text(json.dumps(self.to_dict(), indent=1, default=str))

    def trainer_args(self, args):
        """A copy of args with the derived settings applied: what the Trainer runs with. args is left as given."""
        out = copy.copy(args)
        for d in self.derived:
            value = d.value
            if d.field == "accelerator_config":  # TrainingArguments has turned the given dict into its dataclass
                value = dataclasses.replace(args.accelerator_config, **d.value)
            elif d.field == "activation_checkpointing_kwargs":
                out.gradient_checkpointing_kwargs = value  # the deprecated alias mirrors it, as in TrainingArguments
            setattr(out, d.field, value)
        return out


def resolve(args, model_type: str | None = None, max_tokens: int | None = None, eval_data: bool = False) -> StepPlan:
    """The plan the switches describe (no checks: build_plan checks first). max_tokens: the pieces' cap when it is
    not the given micro_batch_max_tokens (memory_budget_gb's choice)."""
    max_tokens = args.micro_batch_max_tokens if max_tokens is None else max_tokens
    graphs = bool(args.cuda_graphs)
    collator = "plain" if not args.padding_free else "bucketed" if graphs else "padding_free"
    loss = "chunked" if args.chunked_loss else "liger_fused" if args.use_liger_kernel else "model"
    runner = "cuda_graph" if graphs else "pieces" if max_tokens else "plain"
    return StepPlan(collator=collator, varlen=bool(args.padding_free and args.attn_implementation == VARLEN),
                    bucket=args.cuda_graph_bucket if graphs else 0, max_tokens=max_tokens, loss_backend=loss,
                    step_runner=runner, model_type=model_type,
                    offload=bool(args.offload_checkpoints and args.activation_checkpointing),
                    derived=derived_settings(args, eval_data))


def derived_settings(args, eval_data: bool = False) -> tuple[Derived, ...]:
    """The Trainer settings the plan implies. A value the user gave explicitly is kept."""
    found = []
    if eval_data and str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        found.append(Derived("eval_strategy", "steps", "there is evaluation data"))
        if not args.eval_steps:
            found.append(Derived("eval_steps", args.save_steps, "evaluate at every checkpoint"))
    if not args.cuda_graphs:
        return tuple(found)
    kwargs = dict(args.activation_checkpointing_kwargs or {})
    if args.activation_checkpointing and (args.train_mode == "full" or not args.lora_dropout) \
            and "preserve_rng_state" not in kwargs:
        found.append(Derived("activation_checkpointing_kwargs", {"preserve_rng_state": False, **kwargs},
                             "nothing random runs in a layer (no dropout), so the recompute needs no saved RNG "
                             "state, which some torch versions refuse to read inside a graph capture"))
    given = getattr(args, "given_accelerator_config", None)
    if isinstance(given, dict) and "non_blocking" not in given:
        found.append(Derived("accelerator_config", {"non_blocking": True},
                             "copy each batch to the GPU without waiting for the queued step, so the host "
                             "collates the next batch while the GPU runs this one"))
    if args.include_num_input_tokens_seen == "non_padding":
        found.append(Derived("include_num_input_tokens_seen", "no",
                             "counting the tokens reads a GPU value back every step, waiting for the queued step"))
    return tuple(found)


def model_config(args, vocab_size: int | None = None):
    """The model's config as the run will build it, read before any weight is loaded (a preset's is made from its
    name, sized to the tokenizer as utils/model.py's build_model sizes it)."""
    from utils.model_source import resolve_model_source
    return resolve_model_source(args.model_name_or_path, args.trust_remote_code).config(vocab_size)


def build_plan(args, config, lengths: list[int] | None = None, vocab_size: int | None = None,
               eval_data: bool = False) -> StepPlan:
    """The run's StepPlan, or a ConfigError naming every switch the model or the world size rules out.
    lengths: the training samples' token counts, which memory_budget_gb sizes micro_batch_max_tokens by (without
    them the given micro_batch_max_tokens stays). eval_data: the run has evaluation data."""
    from train_args.base import ConfigError
    world = getattr(args, "world_size", 1)
    problems = switch_problems(args, world) + capability_problems(config, args.padding_free, args.chunked_loss)
    if problems:
        raise ConfigError(problems)
    model_type = getattr(config, "model_type", None)
    plan = resolve(args, model_type, eval_data=eval_data)
    if not (args.memory_budget_gb and lengths):
        return plan
    from utils.memory import fit_memory_budget
    fit = fit_memory_budget(args, lengths, config, vocab_size, plan=plan)
    chosen = ArgsView(args, **fit.fields)
    problems = switch_problems(ArgsView(chosen, micro_batch_max_tokens=fit.max_tokens), world)
    if problems:
        raise ConfigError(problems)
    plan = resolve(chosen, model_type, max_tokens=fit.max_tokens, eval_data=eval_data)
    values = {d.field: d.value for d in plan.derived}  # e.g. cuda_graphs' kwargs, with the chosen every_n_layers
    budget = tuple(Derived(name, values.get(name, value), fit.reason) for name, value in fit.fields.items())
    derived = tuple(d for d in plan.derived if d.field not in fit.fields) + budget
    return dataclasses.replace(plan, derived=derived + (Derived("micro_batch_max_tokens", fit.max_tokens, fit.reason),))


CHECKPOINTING_FIELDS = ("activation_checkpointing", "activation_checkpointing_kwargs")


def checkpointing_as_run(args, plan: StepPlan):
    """args with the checkpointing the plan derived (memory_budget_gb's choice, cuda_graphs' kwargs): what the
    layers will do, for estimates made from the given args."""
    derived = {d.field: d.value for d in plan.derived if d.field in CHECKPOINTING_FIELDS}
    return ArgsView(args, **derived) if derived else args


def checkpointing_fields(args, every_n_layers: int) -> dict:
    """The activation-checkpointing fields that make a run checkpoint layers 0, n, 2n, ... (transformers' selective
    checkpointing, every_n_layers n); n = 0: activation_checkpointing false."""
    if every_n_layers == 0:
        return {"activation_checkpointing": False}
    return {"activation_checkpointing_kwargs": {**(args.activation_checkpointing_kwargs or {}),
                                                "every_n_layers": every_n_layers}}


class ArgsView:
    """args as read by a rule or an estimate, with some fields replaced (args itself is not changed)."""

    def __init__(self, args, **values):
        self._args, self._values = args, values

    def __getattr__(self, name):
        return self._values[name] if name in self._values else getattr(self._args, name)
