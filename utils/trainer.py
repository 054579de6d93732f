"""The Trainer side of a run: batches, guards against silent failures, checkpoints that survive a crash.

We use the HF `Trainer` (not trl's SFTTrainer): our data is already input_ids + labels from chat_template/, so
SFTTrainer's own formatting/masking would be a second, competing source of truth. The Trainer brings what must
be exactly right and is hard to write: gradient accumulation normalised by supervised tokens over the whole
window (`num_items_in_batch`), exact resume (optimizer, scheduler, RNG, data position), DDP/DeepSpeed/FSDP.
"""
from __future__ import annotations

import math
import os

import torch
from transformers import Trainer, TrainerCallback

from chat_template import IGNORE_INDEX
from utils.attention import NAME as VARLEN
from utils.cuda_graphs import GraphedStep
from utils.loss import causal_lm_loss, check_model
from utils.progress import ProgressFile



class DataCollator:
    """Pad a list of {input_ids, labels} to the longest sample; padding is never supervised."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            pad = length - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


class PaddingFreeCollator:
    """Concatenate a micro-batch into one row, with position ids restarting at 0 for every sample.

    No pad token is fed or computed: on real SFT data (log-normal lengths) padding to the longest sample wastes
    more than half of every batch. transformers' attention builds a block-diagonal causal mask from the restarting
    position ids, so no token attends across samples (proven in tests/test_padding_free.py by equal losses and
    gradients). A sample's first label is ignored so the last token of one sample never predicts the next one.

    varlen: also emit the sample boundaries (cu_seq_lens_q/k, max_length_q/k) for attn_implementation varlen.
    bucket: pad the row with one unsupervised filler sample up to a multiple of `bucket` tokens, so that rows
    come in a few fixed lengths (each CUDA graph fixes one); max_length is then the padded length, an upper
    bound that stays valid for every batch replayed through the same graph.
    max_tokens: when the row would be longer, also emit "pieces": the same samples, in order, packed into rows of
    at most max_tokens tokens each (a longer sample is a piece of its own). DojoTrainer runs forward + backward on
    each piece and sums the gradients, so the step's peak memory is set by max_tokens instead of by how long the
    micro-batch's samples happen to be. The whole row stays for counting supervised tokens and for evaluation.
    A piece's boundaries are padded with empty samples (repeats of the last boundary) to the whole micro-batch's
    count, so that under cuda_graphs a piece's shapes depend on its padded length only, as a whole row's do."""

    def __init__(self, varlen: bool = False, bucket: int = 0, pad_token_id: int = 0, max_tokens: int = 0):
        self.varlen, self.bucket, self.pad_token_id, self.max_tokens = varlen, bucket, pad_token_id, max_tokens

    def __call__(self, features):
        if not self.max_tokens or sum(len(f["input_ids"]) for f in features) <= self.max_tokens:
            return self.pack(features, self.bucket)
        pieces, size = [[]], 0
        for f in features:
            if pieces[-1] and size + len(f["input_ids"]) > self.max_tokens:
                pieces.append([])
                size = 0
            pieces[-1].append(f)
            size += len(f["input_ids"])
        slots = len(features) + 2 if self.bucket else 0  # a whole bucketed row's boundary count
        return {**self.pack(features, bucket=0), "pieces": [self.pack(piece, self.bucket, slots) for piece in pieces]}

    def pack(self, features, bucket: int, slots: int = 0) -> dict:
        ids, labels, positions, bounds = [], [], [], [0]
        for f in features:
            ids += list(f["input_ids"])
            labels += [IGNORE_INDEX] + list(f["labels"])[1:]
            positions += range(len(f["input_ids"]))
            bounds.append(len(ids))
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        if bucket:
            filler = -len(ids) % bucket
            ids += [self.pad_token_id] * filler
            labels += [IGNORE_INDEX] * filler
            positions += range(filler)
            bounds.append(len(ids))  # always one more boundary, so the row's shape depends on its length only
            longest = len(ids)
            bounds += bounds[-1:] * (slots - len(bounds))  # empty samples: attention skips them
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions])}
        if self.varlen:
            cu = torch.tensor(bounds, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        return batch


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a read-only folder): the run stops, earlier checkpoints stay."""


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN/inf loss means the weights are already ruined: stop loudly instead of logging an average."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            if logs and key in logs and not math.isfinite(logs[key]):
                raise NonFiniteLossError(
                    f"{key} is {logs[key]} at step {state.global_step}. Lower learning_rate, check the data, or use "
                    f"bf16 instead of fp16; the last good checkpoint in {args.output_dir} is kept.")


PADDING_FREE_MODEL_TYPES = ("qwen2", "qwen3", "llama", "gemma", "gemma2", "phi3", "mistral", "qwen2_moe")


def build_collator(args, model, tokenizer):
    if not args.padding_free:
        return DataCollator(tokenizer.pad_token_id)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PADDING_FREE_MODEL_TYPES:
        raise ValueError(f"padding_free needs a model whose attention separates packed samples by position ids; "
                         f"{model_type!r} is not among {PADDING_FREE_MODEL_TYPES}")
    return PaddingFreeCollator(varlen=args.attn_implementation == VARLEN,
                               bucket=args.cuda_graph_bucket if args.cuda_graphs else 0,
                               pad_token_id=tokenizer.pad_token_id or 0, max_tokens=args.micro_batch_max_tokens)


class WalkParametersOnce:
    """A Trainer mixin: the HF Trainer minus two walks over every parameter of the model on every step.

    With LoRA, a 0.5B Qwen has ~16k modules. The Trainer counts all parameters for its FLOP log and hands all of
    them to gradient clipping at each step; a cProfile of the timed steps on the H100 put ~40 ms per step in
    these walks, while the GPU work of the step was ~75 ms (bench/README.md). Both are done once here, with the
    same results (tests/utils/test_trainer.py). Mixed in before the Trainer class (DojoTrainer, the DPO fast path)."""

    _params_no_embedding = None
    _trainable = None

    def floating_point_ops(self, inputs) -> int:
        if self._params_no_embedding is None:
            self._params_no_embedding = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs["input_ids"].numel() * self._params_no_embedding

    def _clip_grad_norm(self, model):
        from accelerate.utils import DistributedType
        if self.accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                     DistributedType.MULTI_GPU):
            return super()._clip_grad_norm(model)  # FSDP/DeepSpeed clip through their own wrappers
        if self._trainable is None:  # frozen parameters have no gradient: leaving them out changes nothing
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._trainable, self.args.max_grad_norm)

    def train(self, *args, **kwargs):
        self._trainable = None  # the model may be re-wrapped between calls
        return super().train(*args, **kwargs)


class DojoTrainer(WalkParametersOnce, Trainer):
    """The HF Trainer with our loss seam (utils/loss.py), pieces of a long micro-batch, CUDA graphs, no checkpoint of
    a broken run, and WalkParametersOnce."""

    _graphed = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss through utils/loss.py's causal_lm_loss, the one every training path uses: the model's own
        forward, or with chunked_loss its decoder and the chunked cross-entropy, each with the model's auxiliary
        terms. (Given a split micro-batch, this computes its whole row: training_step and prediction_step pass
        pieces.) The Trainer's own method keeps what the seam does not do: returning the outputs (evaluation of
        logits), label smoothing, a user's compute_loss_func."""
        inputs = {k: v for k, v in inputs.items() if k != "pieces"}
        if (return_outputs or "labels" not in inputs or self.label_smoother is not None
                or self.compute_loss_func is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        # as the Trainer: a model without loss kwargs averages each micro-batch, and the Trainer then divides by the
        # accumulation steps
        num_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        if not self.args.chunked_loss:  # the wrapped model: DDP's forward hooks and accelerate's autocast run
            loss = causal_lm_loss(model, inputs, labels, num_items, backend="model")
        else:
            with self.accelerator.autocast():  # as the wrapped model's forward would run
                loss = causal_lm_loss(self.accelerator.unwrap_model(model), inputs, labels, num_items, "chunked")
        ranks = self.args.n_gpu if self.args.n_gpu > 1 else self.accelerator.num_processes
        if self.args.average_tokens_across_devices and num_items is not None and ranks > 1:
            loss = loss * ranks  # as the Trainer: num_items counts every rank's tokens, DDP averages the gradients
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """chunked_loss: the evaluation loss through utils/loss.py too, piece by piece as in training. The
        Trainer's own evaluation asks the model for the logits of a whole evaluation batch: at the end of a 0.5B run
        on the H200 its full-vocabulary logits were the peak of train(), 2.90 GB against 1.63 in the training steps.
        Each piece's summed loss is divided by the whole batch's supervised-token count: the batch's mean."""
        if not (self.args.chunked_loss and prediction_loss_only and "labels" in inputs):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        num_items = (inputs["labels"][..., 1:] != IGNORE_INDEX).sum()
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = sum(self.compute_loss(model, self._prepare_inputs(piece), num_items_in_batch=num_items)
                       for piece in inputs.get("pieces", [inputs]))
        return loss.detach(), None, None

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A micro-batch split into pieces (micro_batch_max_tokens): one forward + backward per piece, gradients
        summed; each piece's loss is divided by the whole micro-batch's supervised-token count, so the sum is the
        whole micro-batch's loss and gradient."""
        pieces = inputs.get("pieces")
        if pieces is None:
            return self._note_loss(self._forward_backward(model, inputs, num_items_in_batch))
        if num_items_in_batch is None:  # each piece would be averaged on its own: the sum would be wrong
            raise ValueError("micro_batch_max_tokens needs the Trainer's num_items_in_batch (labels in every batch, "
                             "a model whose loss takes num_items_in_batch)")
        return self._note_loss(sum(self._forward_backward(model, piece, num_items_in_batch) for piece in pieces))

    # --- no checkpoint of a broken run ----------------------------------------------------------------------------
    # Every micro-batch's loss is checked on the device (a flag, no host sync, so the CUDA-graph path keeps its
    # pace); the flag is read before every save, and at logging steps the Trainer's averaged loss is checked by
    # StopOnNonFiniteLoss. Before a save the trained weights are checked too: an overflow in the last backward
    # leaves a finite loss but NaN weights.
    _nonfinite = None
    _checked_step = 0

    def _note_loss(self, loss):
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        return loss

    def check_finite(self, what: str) -> None:
        """Raise NonFiniteLossError instead of saving `what`. Every rank saves, so every rank calls this and the
        verdict is gathered: all ranks stop together."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        device = params[0].device if params else self.args.device
        bad = torch.zeros(2, device=device)
        if self._nonfinite is not None:
            bad[0] = self._nonfinite.to(device).float()
        if params and self._weights_are_local():
            bad[1] = (~torch.stack([torch.isfinite(torch.linalg.vector_norm(p.detach())) for p in params])).any()
        if self.args.world_size > 1:
            bad = self.accelerator.gather(bad).view(-1, 2).amax(0)
        loss_bad, weights_bad = bad.tolist()
        if loss_bad or weights_bad:
            found = "a training loss" if loss_bad else "the trained weights"
            raise NonFiniteLossError(
                f"{found} became NaN/inf between step {self._checked_step} and step {self.state.global_step}; "
                f"{what} was not saved. Lower learning_rate, check the data, or use bf16 instead of fp16; the last "
                f"good checkpoint in {self.args.output_dir} is kept.")
        self._nonfinite, self._checked_step = None, self.state.global_step

    def _weights_are_local(self) -> bool:
        """FSDP and DeepSpeed hold shards: their parameters here are not the weights."""
        from accelerate.utils import DistributedType
        return self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                     DistributedType.MULTI_GPU)

    def _save_checkpoint(self, model, trial):
        """Only finite checkpoints; a failed write (full disk, read-only folder) ends in CheckpointSaveError that
        names the last complete checkpoint, which the Trainer's write-then-rotate order leaves intact."""
        from safetensors import SafetensorError
        from utils.run_folder import last_checkpoint
        self.check_finite(f"checkpoint-{self.state.global_step}")
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as RuntimeError
            raise CheckpointSaveError(
                f"could not write checkpoint-{self.state.global_step} in {self.args.output_dir} "
                f"({type(err).__name__}: {err}). The last complete checkpoint, "
                f"{last_checkpoint(self.args.output_dir) or 'none yet'}, is intact: free space or fix permissions, "
                "then resume with --resume_from_checkpoint true.") from err

    def save_model(self, output_dir=None, _internal_call=False):
        if not _internal_call:  # the final save (a checkpoint's was checked in _save_checkpoint)
            self.check_finite("the final model")
        super().save_model(output_dir, _internal_call)

    def _forward_backward(self, model, inputs, num_items_in_batch):
        """cuda_graphs: forward + backward by CUDA graph replay (utils/cuda_graphs.py); else the Trainer's step."""
        if not (self.args.cuda_graphs and torch.cuda.is_available()):  # CPU: the plain step
            return super().training_step(model, inputs, num_items_in_batch)
        if self._graphed is None or not model.training:
            # The Trainer's own step calls model.train() every time; it walks every module, so here only on the
            # first step and after an evaluation. Not `model.training` alone: a PeftModel is created in training
            # mode around a base model that from_pretrained left in eval mode, and layers in eval mode skip
            # activation checkpointing (measured on the H200: 2.07 GB more at a piece of 1,536 tokens, bench/README).
            model.train()
        if self._graphed is None:
            params = [p for p in model.parameters() if p.requires_grad]
            self._graphed = GraphedStep(params, lambda batch, items: self.compute_loss(model, batch,
                                                                                    num_items_in_batch=items))
        return self._graphed(self._prepare_inputs(inputs), num_items_in_batch)


def build_trainer(model, args, tokenizer, train_dataset, eval_dataset, optimizer=None, callbacks=()):
    if (args.cuda_graphs or args.chunked_loss or args.micro_batch_max_tokens) and args.world_size > 1:
        raise ValueError("cuda_graphs, chunked_loss and micro_batch_max_tokens (also as memory_budget_gb sets it) "
                         "are single-process paths; under torchrun use use_liger_kernel for the loss and "
                         "per_device_train_batch_size for memory")
    if args.chunked_loss:
        check_model(model.config)
    return DojoTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=build_collator(args, model, tokenizer), processing_class=tokenizer,
        optimizers=(optimizer, None), callbacks=[StopOnNonFiniteLoss(), ProgressFile(), *callbacks],
    )


def rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
