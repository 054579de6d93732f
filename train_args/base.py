"""TrainArgs: every field a run reads, with its default and help text defined once.

It subclasses `transformers.TrainingArguments`, so every Trainer field (learning_rate, num_train_epochs, ...) is a
field here too; the defaults below are re-chosen for single-GPU fine-tuning. A ready config in this folder is a
dataclass that subclasses TrainArgs and changes defaults only; `python main_train.py --help` lists every field.
Field names follow LLM-Dojo's so its users feel at home.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from utils.step_plan import switch_problems
from utils.run_folder import resume_value

TRAIN_MODES = ("full", "lora", "qlora")
STAGES = ("sft", "dpo", "kto", "rm")
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")  # trl's DPOTrainer loss_type
REFERENCE_FREE_LOSSES = ("orpo", "simpo", "cpo")
# LLM-Dojo's rlhf_type -> (stage, pref_loss); None keeps the pref_loss given
RLHF_TYPES = {"dpo": ("dpo", None), "kto": ("kto", None), "cpo": ("dpo", "cpo"), "simpo": ("dpo", "simpo"),
              "cposimpo": ("dpo", "simpo"), "orpo": ("dpo", "orpo"), "rm": ("rm", None), "reward": ("rm", None)}
TORCH_DTYPES = ("auto", "bfloat16", "float16", "float32")
# init_lora_weights that need nothing but the base weights (eva, corda and loftq need a setup step we do not run)
INIT_LORA_WEIGHTS = ("default", "true", "false", "gaussian", "pissa", "olora", "orthogonal", "mica")


class ConfigError(ValueError):
    """Bad user input in the config; `problems` holds one 'field: what is wrong' line per bad value."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainArgs(TrainingArguments):
    # --- model -----------------------------------------------------------------------------------------------------
    model_name_or_path: str = field(default="etude-tiny", metadata=_help(
        "A local model folder, a hub id (needs internet), or an Etude preset name (etude-tiny, ...) to start from "
        "random weights."))
    tokenizer_name_or_path: str | None = field(default=None, metadata=_help(
        "Tokenizer folder when it is not the model's own, e.g. a small tokenizer from etude_model.train_tokenizer "
        "for an Etude preset (the preset's vocabulary is sized to it)."))
    template_name: str | None = field(default=None, metadata=_help(
        "Chat template (qwen, qwen3, yi, gemma, gemma3, phi3, deepseek, deepseek3, llama3, etude, or own: the "
        "model's own chat_template as it is). Omitted: the model's own chat_template is kept (one of ours when it "
        "is one of that family's official variants); a model without one: detected from its config and vocabulary. "
        "The choice and the reason are printed."))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "Run Python code shipped inside the model folder. Off: only turn it on for a model you trust."))
    torch_dtype: str = field(default="auto", metadata=_help(
        "Weight dtype: auto (bf16 on a bf16 GPU, else fp32), bfloat16, float16 or float32."))
    attn_implementation: str = field(default="sdpa", metadata=_help(
        "Attention kernel: sdpa, eager, ..., or varlen (with padding_free: flash attention's variable-length kernel "
        "over the packed samples, no T x T mask; CUDA, bf16/fp16; sdpa with the same boundaries elsewhere)."))
    template_mismatch: str = field(default="error", metadata=_help(
        "When our template renders the probe conversations differently from the model folder's own chat_template "
        "(the one it is served with): error (stop, showing the first difference) or ok (train with ours anyway)."))
    train_new_tokens: bool = field(default=False, metadata=_help(
        "Allow a template whose control tokens are missing from the tokenizer's vocabulary: they are added with "
        "new, randomly initialised embeddings, which are then trained (full fine-tuning trains them anyway; "
        "LoRA/QLoRA also train and save the input embeddings and output head). Off: such a template is refused."))
    # --- data ------------------------------------------------------------------------------------------------------
    train_data_path: list[str] = field(default_factory=lambda: ["data/skills/train.jsonl"], metadata=_help(
        "Training data: one or more JSONL/JSON/parquet files or folders (alpaca, OpenAI messages or ShareGPT)."))
    eval_data_path: list[str] | None = field(default=None, metadata=_help(
        "Evaluation data, same formats. Omitted: eval_ratio of the training data is held out."))
    eval_ratio: float = field(default=0.0, metadata=_help(
        "Fraction of the training data held out for evaluation when eval_data_path is not given."))
    max_len: int = field(default=1024, metadata=_help(
        "Token limit per sample; longer samples are cut at the right, and dropped if no supervised token is left."))
    train_on: str = field(default="all", metadata=_help(
        "Which assistant turns carry the loss: all, or last (only the final one)."))
    special_text: str = field(default="error", metadata=_help(
        "Content containing special-token text such as '<|im_end|>': error (refuse, naming file:line) or keep "
        "(tokenize it as plain text)."))
    invalid_records: str = field(default="error", metadata=_help(
        "A malformed record: error (stop, naming file:line and field) or skip (drop it, count it, list the first "
        "few). skip is for scraped data sets with a few broken records."))
    score_data_path: list[str] | None = field(default=None, metadata=_help(
        "Held-out conversations to score before and after training: greedy answer to each final user turn, "
        "exact match with the reference answer (the model must also stop). Omitted: no score."))
    score_samples: int = field(default=50, metadata=_help(
        "How many score_data_path samples to score (the first ones); 0: no score (a config's score_data_path "
        "switched off). Scoring generates, which on a CPU costs about as much per sample as a few training steps."))
    score_before: bool = field(default=True, metadata=_help(
        "Also score before training (the 'before' half of before -> after). false: score after training only, "
        "half the scoring time."))
    score_max_new_tokens: int = field(default=0, metadata=_help(
        "Longest answer generated when scoring. 0: the longest reference answer's token count plus 4 (a longer "
        "answer cannot match, so an untrained model that never stops costs only that many tokens per prompt)."))
    default_system: str | None = field(default=None, metadata=_help(
        "System prompt the template injects into a conversation without one (templates that have one, e.g. qwen). "
        "Omitted: the one of the model's own chat_template (Qwen2.5: 'You are Qwen, created by Alibaba Cloud. ...')."))
    # --- method ----------------------------------------------------------------------------------------------------
    train_mode: str = field(default="lora", metadata=_help("full, lora or qlora (4-bit NF4 base + LoRA)."))
    use_dora: bool = field(default=False, metadata=_help("DoRA: weight-decomposed LoRA (with lora or qlora)."))
    factored_dora_norm: bool = field(default=False, metadata=_help(
        "Fast path for DoRA: each row norm ||W + sBA|| from W A^T, A A^T and the frozen ||W||, without building the "
        "adapted (out x in) weight in every forward as peft does, and once per forward of the decoder (not again in "
        "a checkpoint's recompute). Same loss and gradients (utils/dora.py)."))
    fused_lora: bool = field(default=False, metadata=_help(
        "Less peak memory for LoRA and DoRA, and no slower (bench/README.md has the measurement): the adapter's "
        "output is added into the base output by the B matmul itself (in place), so the backward keeps their sum "
        "where it kept both parts; with DoRA (needs factored_dora_norm true and lora_dropout 0) the per-feature "
        "scale goes onto W and B instead of the output (a 4-bit W: once onto the sum). Same function and gradients "
        "(utils/fused_lora.py)."))
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA alpha; the update is scaled by alpha/r."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input."))
    lora_target_modules: list[str] | None = field(default=None, metadata=_help(
        "Module names to adapt. Omitted: every linear layer except the output head."))
    use_rslora: bool = field(default=False, metadata=_help("rsLoRA: scale by alpha/sqrt(r) instead of alpha/r."))
    loraplus_lr_ratio: float | None = field(default=None, metadata=_help(
        "LoRA+: learning rate of B = ratio x learning rate of A (the paper suggests 16)."))
    init_lora_weights: str = field(default="default", metadata=_help(
        "LoRA init: default (A kaiming, B zero), gaussian, pissa, pissa_niter_N, olora, ..."))
    padding_free: bool = field(default=False, metadata=_help(
        "Fast path: concatenate each micro-batch into one row with restarting position ids instead of padding "
        "(same loss and gradients; no compute spent on pad tokens). For the model types whose capabilities include "
        "it (utils/step_plan.py: Qwen, Llama, Mistral, Gemma, Phi-3). Stage dpo too: each micro-batch's chosen and "
        "rejected sequences in one row, policy and reference."))
    compile_layers: bool = field(default=False, metadata=_help(
        "Fast path: torch.compile every decoder layer (torchtune's recipe). Fuses the small ops between matmuls and "
        "cuts kernel launches, which dominate small-model steps. The first steps compile (bench/README.md has "
        "the time); sequence lengths are dynamic shapes, so a new length does not recompile. Activation "
        "checkpointing stays outside the compiled layer, so it keeps only each layer's input, as eager does."))
    chunked_loss: bool = field(default=False, metadata=_help(
        "Fast path: the output head and the cross-entropy run a chunk of tokens at a time, gradients computed on the "
        "fly, so the full-vocabulary logits never exist (GBs with 150k-word vocabularies). Same loss and "
        "gradients as the plain path (Gemma 2/3's logit soft-capping included; a model that transforms its logits "
        "otherwise is refused), evaluation included; one process (not under torchrun)."))
    cuda_graphs: bool = field(default=False, metadata=_help(
        "Fast path (one CUDA GPU): replay each micro-batch's forward + backward as a CUDA graph, one launch instead "
        "of thousands. Needs padding_free and attn_implementation varlen; rows are padded to a multiple of "
        "cuda_graph_bucket tokens and the first batch of each padded length is captured (bench/README.md has the "
        "time). "
        "Use lora_dropout 0: with dropout, checkpointing saves CUDA RNG state, which some torch versions refuse "
        "inside a capture. The run's plan copies batches to the GPU non-blocking (accelerator_config non_blocking, "
        "unless given), so the host prepares the next step while the GPU runs this one. On CPU the plain step "
        "runs."))
    cuda_graph_bucket: int = field(default=512, metadata=_help(
        "cuda_graphs: pad packed rows to a multiple of this many tokens. Smaller: less padding, more graphs."))
    micro_batch_max_tokens: int = field(default=0, metadata=_help(
        "With padding_free: split a micro-batch whose packed row is longer than this into pieces of at most this "
        "many tokens (whole samples; a longer sample is a piece alone), forward + backward each, gradients summed: "
        "the same step, with peak memory bounded by tokens instead of by the samples' lengths. 0: off."))
    memory_budget_gb: float = field(default=0.0, metadata=_help(
        "With padding_free: fit the predicted peak GPU memory (the --dry_run estimate) in this many GB. First the "
        "checkpointing: the fewest recomputed layers whose whole micro-batch fits (none, then every n-th layer "
        "checkpointed; kept as given when activation_checkpointing is off or every_n_layers is set). Only when "
        "every layer checkpointed does not fit: micro_batch_max_tokens (replacing any given). The choice is "
        "logged and saved in step_plan.json. Leave "
        "headroom: the prediction is not exact (bench/README.md compares it with measured peaks), and CUDA "
        "graphs reserve more than they allocate. Compare with the measured peak logged after "
        "training. 0: off."))
    dry_run: bool = field(default=False, metadata=_help(
        "Validate config, tokenizer and data, print the sample and the summary, and stop before training."))
    # --- TrainingArguments defaults re-chosen for single-GPU fine-tuning -------------------------------------------
    output_dir: str | None = field(default="output/run", metadata=_help("Where everything the run writes goes."))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        "Allow a non-empty output_dir (its files may be overwritten). Off: a non-empty output_dir is refused."))
    per_device_train_batch_size: int = field(default=4, metadata=_help("Samples per device per micro-batch."))
    per_device_eval_batch_size: int = field(default=4, metadata=_help("Samples per device per eval batch."))
    gradient_accumulation_steps: int = field(default=2, metadata=_help("Micro-batches per optimizer step."))
    learning_rate: float = field(default=2e-4, metadata=_help("Peak learning rate (LoRA-sized; use ~1e-5 for full)."))
    num_train_epochs: float = field(default=1.0, metadata=_help("Epochs (max_steps > 0 overrides)."))
    lr_scheduler_type: str = field(default="cosine", metadata=_help("Learning-rate schedule after warmup."))
    warmup_steps: float = field(default=0.03, metadata=_help("Warmup: steps, or a fraction of all steps if < 1."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm."))
    logging_steps: float = field(default=10, metadata=_help("Log every N steps."))
    save_steps: float = field(default=500, metadata=_help("Checkpoint every N steps."))
    save_total_limit: int | None = field(default=3, metadata=_help("Keep at most this many checkpoints."))
    eval_strategy: str = field(default="no", metadata=_help(
        "no, steps or epoch; set automatically to steps (every eval_steps) when there is eval data."))
    bf16: bool | None = field(default=None, metadata=_help(
        "bf16 mixed precision. Omitted: on when the GPU supports bf16, else fp32.", nargs="?", const=True))
    activation_checkpointing: bool = field(default=True, metadata=_help(
        "Gradient (activation) checkpointing: less memory, about a fifth more compute."))
    activation_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata=_help("Non-reentrant checkpointing keeps LoRA adapters trainable without input-grad hooks. "
                       "every_n_layers N (transformers): checkpoint layers 0, N, 2N, ... only; the others keep their "
                       "activations, a faster backward for more memory (bench/README.md has the measured trade; "
                       "--dry_run predicts the memory)."))
    offload_checkpoints: bool = field(default=False, metadata=_help(
        "Keep each checkpointed layer's input in pinned host memory from its forward to its backward (unsloth's "
        "offloaded checkpointing): frees layers x tokens x hidden x 2 bytes of GPU memory (--dry_run counts it) for "
        "a copy out and a copy back per layer, queued without waiting (utils/offload.py; bench/README.md has its "
        "cost). Needs activation_checkpointing."))
    report_to: None | str | list[str] = field(default="tensorboard", metadata=_help(
        "Loggers: tensorboard, none, wandb, ..."))
    include_num_input_tokens_seen: str = field(default="non_padding", metadata=_help(
        "Count the tokens trained on: non_padding (pad excluded; logs show tokens per second), all, or no. Under "
        "cuda_graphs the run's plan counts none: reading the count back would wait for the GPU every step."))
    logging_nan_inf_filter: bool = field(default=False, metadata=_help(
        "Off here: a non-finite loss must be seen (and stop the run), not averaged away."))
    remove_unused_columns: bool = field(default=False, metadata=_help("Keep our collated columns."))
    seed: int = field(default=42, metadata=_help("Random seed for init, data order and dropout."))
    # --- preference training (DPO, KTO, ORPO, SimPO, reward models; utils/preference.py) ----------------------------
    stage: str = field(default="sft", metadata=_help(
        "What the run trains (LLaMA-Factory's names): sft; dpo (pairs prompt/chosen/rejected; pref_loss picks the "
        "loss: DPO's variants, or the reference-free orpo, simpo, cpo); kto (unpaired answers labelled true/false); "
        "rm (a reward model: Bradley-Terry on pairs, a one-output sequence-classification head)."))
    rlhf_type: str | None = field(default=None, metadata=_help(
        "LLM-Dojo's name for stage + pref_loss, accepted as an alias: DPO, KTO, CPO, SimPO, CPOSimPO, ORPO, RM "
        "(or Reward)."))
    pref_loss: str = field(default="sigmoid", metadata=_help(
        "stage dpo: the loss. With a reference policy (trl's DPOTrainer): sigmoid (DPO), ipo, hinge, robust, "
        "exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm. "
        "Reference-free: orpo (odds ratio + SFT), simpo (length-normalised margin with gamma), cpo."))
    beta: float = field(default=0.1, metadata=_help(
        "DPO/KTO: strength of the pull towards the reference policy (higher: stays closer). ORPO: the weight of the "
        "odds-ratio term (lambda). SimPO/CPO: the reward scale."))
    label_smoothing: float = field(default=0.0, metadata=_help(
        "Probability that a pair's labels are flipped (robust DPO, in [0, 0.5); exo_pair needs > 0; cDPO with "
        "sigmoid via robust)."))
    simpo_gamma: float = field(default=0.5, metadata=_help("SimPO's target reward margin gamma."))
    cpo_alpha: float | None = field(default=None, metadata=_help(
        "Weight of the SFT (NLL on chosen) term of cpo/simpo. Omitted: 1.0 for cpo, 0 for simpo (the paper's)."))
    pref_ftx: float = field(default=0.0, metadata=_help(
        "stage dpo with a reference policy: weight of an SFT term (the chosen answer's mean token NLL) added to the "
        "preference loss (LLaMA-Factory's pref_ftx; trl's loss_type 'sft'; RPO). DPO alone may lower the chosen "
        "answer's likelihood too, as long as the rejected one falls faster, until the model stops answering; "
        "this term holds the chosen answers up. 0: none."))
    kto_desirable_weight: float = field(default=1.0, metadata=_help(
        "KTO: loss weight of the desirable (label true) answers; raise it when they are outnumbered."))
    kto_undesirable_weight: float = field(default=1.0, metadata=_help(
        "KTO: loss weight of the undesirable (label false) answers."))
    ref_model_path: str | None = field(default=None, metadata=_help(
        "Reference policy of dpo/kto. Omitted: the starting model, which with lora/qlora is the same weights with "
        "the adapter switched off (no second copy in memory), and with full training a frozen copy."))
    precompute_ref_log_probs: bool = field(default=False, metadata=_help(
        "dpo/kto: compute the reference log-probs of every sample once before training instead of at every step: "
        "no reference forward per step, and full training keeps no frozen copy in memory."))

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if isinstance(self.train_data_path, str):
            self.train_data_path = [self.train_data_path]
        if isinstance(self.eval_data_path, str):
            self.eval_data_path = [self.eval_data_path]
        problems = self._resolve_rlhf_type() + self.problems()
        if problems:  # before TrainingArguments' own checks, so that every bad field of ours is reported at once
            raise ConfigError(problems)
        self.resume_from_checkpoint = resume_value(self.resume_from_checkpoint)
        # What the user gave, before TrainingArguments turns it into its dataclass: utils/step_plan.py derives
        # non_blocking under cuda_graphs only where the user did not set it.
        self.given_accelerator_config = _given_dict(self.accelerator_config)
        super().__post_init__()

    def _resolve_rlhf_type(self) -> list[str]:
        """LLM-Dojo's rlhf_type is an alias of stage + pref_loss (LLaMA-Factory's names, the fields): set them from
        it, or say why it cannot be read."""
        if self.rlhf_type is None:
            return []
        key = str(self.rlhf_type).lower()
        if key not in RLHF_TYPES:
            return [f"rlhf_type: must be one of {', '.join(sorted(RLHF_TYPES))} (any case), got {self.rlhf_type!r}"]
        stage, loss = RLHF_TYPES[key]
        if self.stage not in ("sft", stage):
            return [f"rlhf_type: {self.rlhf_type!r} means stage {stage!r}, but stage is {self.stage!r}: give one of "
                    "the two"]
        self.stage, self.pref_loss = stage, loss or self.pref_loss
        if key == "cposimpo" and self.cpo_alpha is None:
            self.cpo_alpha = 1.0  # CPO's SFT term on top of SimPO's loss
        return []

    def problems(self) -> list[str]:
        """'field: what is wrong' for every field that breaks a rule of FIELD_RULES or of the fast-path switches'
        SWITCH_RULES in utils/step_plan.py (no file is read)."""
        found = []
        for name, valid, rule in FIELD_RULES:
            try:
                ok = valid(self)
            except TypeError:  # e.g. None where a number is expected
                ok = False
            if not ok:
                found.append(f"{name}: {rule}, got {getattr(self, name)!r}")
        return found + switch_problems(self)


def _given_dict(value) -> dict | None:
    """accelerator_config as the keys the user set: None for a file path or an AcceleratorConfig."""
    if value is None:
        return {}
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:  # TrainingArguments reports it
            return None
    return dict(value) if isinstance(value, dict) else None


def _lora(a) -> bool:
    return a.train_mode in ("lora", "qlora")


def _valid_init(value) -> bool:
    return str(value).lower() in INIT_LORA_WEIGHTS or re.fullmatch(r"pissa_niter_\d+", str(value)) is not None


# (field, when its value is valid, the rule in words). Checked together before anything is read or written, so
# that a run never stops on a bad value after writing its folder, and a user sees every bad field at once.
FIELD_RULES = (
    ("train_mode", lambda a: a.train_mode in TRAIN_MODES, f"must be one of {', '.join(TRAIN_MODES)}"),
    ("torch_dtype", lambda a: a.torch_dtype in TORCH_DTYPES, f"must be one of {', '.join(TORCH_DTYPES)}"),
    ("max_len", lambda a: a.max_len >= 1, "must be >= 1 (tokens per sample)"),
    ("eval_ratio", lambda a: 0.0 <= a.eval_ratio < 1.0, "must be in [0, 1)"),
    ("score_samples", lambda a: a.score_samples >= 0, "must be >= 0 (0: no score)"),
    ("score_max_new_tokens", lambda a: a.score_max_new_tokens >= 0, "must be >= 0 (0: sized from the references)"),
    ("train_on", lambda a: a.train_on in ("all", "last"), "must be all or last"),
    ("special_text", lambda a: a.special_text in ("error", "keep"), "must be error or keep"),
    ("invalid_records", lambda a: a.invalid_records in ("error", "skip"), "must be error or skip"),
    ("template_mismatch", lambda a: a.template_mismatch in ("error", "ok"), "must be error or ok"),
    ("lora_rank", lambda a: not _lora(a) or a.lora_rank >= 1, "must be >= 1"),
    ("lora_alpha", lambda a: not _lora(a) or a.lora_alpha > 0, "must be > 0 (the update is scaled by alpha/r)"),
    ("lora_dropout", lambda a: 0.0 <= a.lora_dropout < 1.0, "must be in [0, 1)"),
    ("lora_target_modules", lambda a: a.lora_target_modules is None or (
        len(a.lora_target_modules) > 0 and all(a.lora_target_modules)), "must name modules (or be omitted)"),
    ("init_lora_weights", lambda a: _valid_init(a.init_lora_weights),
     "must be default, gaussian, pissa, pissa_niter_N, olora, orthogonal, mica, true or false"),
    ("loraplus_lr_ratio", lambda a: a.loraplus_lr_ratio is None or (a.loraplus_lr_ratio > 0 and _lora(a)),
     "must be > 0, with train_mode lora or qlora (it sets the learning rate of LoRA's B)"),
    ("use_dora", lambda a: not a.use_dora or _lora(a), "needs train_mode lora or qlora"),
    ("factored_dora_norm", lambda a: not a.factored_dora_norm or a.use_dora,
     "is a DoRA fast path: set use_dora true as well"),
    ("fused_lora", lambda a: not a.fused_lora or _lora(a), "needs train_mode lora or qlora"),
    ("factored_dora_norm", lambda a: not (a.fused_lora and a.use_dora) or a.factored_dora_norm,
     "must be true with fused_lora and use_dora (the fused DoRA form reads the factored norm)"),
    ("lora_dropout", lambda a: not (a.fused_lora and a.use_dora) or a.lora_dropout == 0,
     "must be 0 with fused_lora and use_dora (DoRA with dropout adds a base matmul of the dropped-out input, which "
     "the fused form has no place for; LoRA alone takes dropout)"),
    ("activation_checkpointing", lambda a: not a.offload_checkpoints or a.activation_checkpointing,
     "must be true with offload_checkpoints (what it offloads are the checkpointed layers' inputs)"),
    ("activation_checkpointing_kwargs", lambda a: "offload" not in (a.activation_checkpointing_kwargs or {}),
     "offload: use offload_checkpoints true instead (transformers' offload copies to the host synchronously at "
     "every layer, cannot run in a CUDA graph and fails without a GPU)"),
    ("learning_rate", lambda a: a.learning_rate > 0, "must be > 0"),
    ("per_device_train_batch_size", lambda a: a.per_device_train_batch_size >= 1, "must be >= 1"),
    ("per_device_eval_batch_size", lambda a: a.per_device_eval_batch_size >= 1, "must be >= 1"),
    ("gradient_accumulation_steps", lambda a: a.gradient_accumulation_steps >= 1, "must be >= 1"),
    ("num_train_epochs", lambda a: a.max_steps > 0 or a.num_train_epochs > 0, "must be > 0 (or set max_steps)"),
    ("warmup_steps", lambda a: a.warmup_steps >= 0, "must be >= 0"),
    ("weight_decay", lambda a: a.weight_decay >= 0, "must be >= 0"),
    ("max_grad_norm", lambda a: a.max_grad_norm >= 0, "must be >= 0 (0: no clipping)"),
    ("logging_steps", lambda a: a.logging_steps > 0, "must be > 0"),
    ("save_steps", lambda a: a.save_steps > 0, "must be > 0"),
    ("save_total_limit", lambda a: a.save_total_limit is None or a.save_total_limit >= 1, "must be >= 1 (or None)"),
    # preference training
    ("stage", lambda a: a.stage in STAGES, f"must be one of {', '.join(STAGES)}"),
    ("pref_loss", lambda a: a.pref_loss in DPO_LOSSES + REFERENCE_FREE_LOSSES,
     f"must be one of {', '.join(DPO_LOSSES + REFERENCE_FREE_LOSSES)}"),
    ("beta", lambda a: a.beta > 0, "must be > 0"),
    ("label_smoothing", lambda a: 0.0 <= a.label_smoothing < 0.5, "must be in [0, 0.5)"),
    ("label_smoothing", lambda a: a.pref_loss != "exo_pair" or a.label_smoothing > 0,
     "must be > 0 with pref_loss exo_pair (the EXO paper uses 1e-3)"),
    ("score_data_path", lambda a: a.stage != "rm" or not a.score_data_path or a.score_samples == 0,
     "a reward model writes no answers to score (stage rm): drop it or set score_samples 0"),
    ("pref_ftx", lambda a: a.pref_ftx >= 0, "must be >= 0 (0: no SFT term)"),
    ("pref_ftx", lambda a: a.pref_ftx == 0 or (a.stage == "dpo" and not _reference_free(a)),
     "is DPO's SFT term (stage dpo with a reference policy); orpo has its own, cpo/simpo take cpo_alpha"),
    ("kto_desirable_weight", lambda a: a.kto_desirable_weight > 0, "must be > 0"),
    ("kto_undesirable_weight", lambda a: a.kto_undesirable_weight > 0, "must be > 0"),
    ("ref_model_path", lambda a: not _reference_free(a) or not (a.ref_model_path or a.precompute_ref_log_probs),
     "this stage and pref_loss use no reference policy: drop ref_model_path and precompute_ref_log_probs"),
)


def _reference_free(a) -> bool:
    return a.stage == "rm" or (a.stage == "dpo" and a.pref_loss in REFERENCE_FREE_LOSSES)


@dataclass
class ChatSFTRecipe(TrainArgs):
    """The shared recipe of the ready family configs (qwen_lora.py, ...): chat SFT of an open model, defined once
    here so each family file only says which model, template and method."""
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_sft.jsonl"])
    eval_ratio: float = 0.02               # hold out 2% for eval loss
    max_len: int = 2048
    num_train_epochs: float = 2.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4   # 16 samples per optimizer step
    save_steps: float = 200


@dataclass
class ChatDPORecipe(ChatSFTRecipe):
    """The shared recipe of the ready DPO configs (qwen_dpo.py, ...): DPO on preference pairs, usually after SFT.
    Each pair is two sequences through the policy and two through the reference, so batches are half SFT's."""
    stage: str = "dpo"
    pref_loss: str = "sigmoid"
    beta: float = 0.1
    train_data_path: list[str] = field(default_factory=lambda: ["data/my_pairs.jsonl"])
    max_len: int = 1024
    num_train_epochs: float = 1.0
    learning_rate: float = 5e-5           # LoRA-sized; DPO wants a gentler step than SFT
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8  # 16 pairs per optimizer step
    logging_steps: float = 5
