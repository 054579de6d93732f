"""The Trainer side of a run: the step the StepPlan chose, guards against silent failures, checkpoints that survive
a crash.

We use the HF `Trainer` (not trl's SFTTrainer): our data is already input_ids + labels from chat_template/, so
SFTTrainer's own formatting/masking would be a second, competing source of truth. The Trainer brings what must
be exactly right and is hard to write: gradient accumulation normalised by supervised tokens over the whole
window (`num_items_in_batch`), exact resume (optimizer, scheduler, RNG, data position), DDP/DeepSpeed/FSDP.
What runs in a step (collator, loss backend, step runner) is the run's StepPlan (utils/step_plan.py), read here.
"""
from __future__ import annotations

import math

import torch
from transformers import Trainer, TrainerCallback

from chat_template import IGNORE_INDEX
from utils.collators import build_collator
from utils.cuda_graphs import GraphedStep
from utils.loss import causal_lm_loss
from utils.offload import offload_callbacks
from utils.step_plan import build_plan
from utils.progress import ProgressFile


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


class WalkParametersOnce:
    """A Trainer mixin: the HF Trainer minus two walks over every parameter of the model on every step.

    With LoRA a small model has thousands of modules. The Trainer counts all parameters for its FLOP log and hands
    all of them to gradient clipping at each step, host time that is a large share of a small model's step
    (bench/README.md). Both are done once here, with the same results (tests/utils/test_trainer.py). Mixed in
    before the Trainer class (DojoTrainer, the DPO fast path)."""

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
    """The HF Trainer running the step of a StepPlan (utils/step_plan.py): our loss seam (utils/loss.py), pieces of a
    long micro-batch, CUDA graphs, no checkpoint of a broken run, and WalkParametersOnce.

    plan: the run's StepPlan (omitted: the one the args and the model's config give). The Trainer runs with a copy
    of args carrying the plan's derived settings (StepPlan.trainer_args); the args given are left as they are.
    micro_batch_hooks: functions (inputs, loss) called after each micro-batch's forward + backward (the bench's
    token meter); capture_hooks: functions (inputs, seconds) called after each CUDA-graph capture."""

    _graphed = None

    def __init__(self, model=None, args=None, *rest, plan=None, **kwargs):
        self.plan = plan or build_plan(args, getattr(model, "config", None))
        self.micro_batch_hooks, self.capture_hooks = [], []
        super().__init__(model, self.plan.trainer_args(args), *rest, **kwargs)

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
        # the wrapped model, so that DDP's forward hooks and accelerate's autocast run (liger_fused: the forward the
        # Trainer patched)
        if self.plan.loss_backend != "chunked":
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
        Trainer's own evaluation asks the model for the logits of a whole evaluation batch, whose full-vocabulary
        logits can be the peak of train(), above every training step (bench/README.md). Each piece's summed loss is
        divided by the whole batch's supervised-token count: the batch's mean."""
        if not (self.plan.loss_backend == "chunked" and prediction_loss_only and "labels" in inputs):
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
            loss = self._forward_backward(model, inputs, num_items_in_batch)
        elif num_items_in_batch is None:  # each piece would be averaged on its own: the sum would be wrong
            raise ValueError("micro_batch_max_tokens needs the Trainer's num_items_in_batch (labels in every batch, "
                             "a model whose loss takes num_items_in_batch)")
        else:
            loss = sum(self._forward_backward(model, piece, num_items_in_batch) for piece in pieces)
        for hook in self.micro_batch_hooks:
            hook(inputs, loss)
        return self._note_loss(loss)

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
        """Step runner cuda_graph: forward + backward by CUDA graph replay (utils/cuda_graphs.py); else the
        Trainer's step."""
        if not (self.plan.step_runner == "cuda_graph" and torch.cuda.is_available()):  # CPU: the plain step
            return super().training_step(model, inputs, num_items_in_batch)
        if self._graphed is None or not model.training:
            # The Trainer's own step calls model.train() every time; it walks every module, so here only on the
            # first step and after an evaluation. Not `model.training` alone: a PeftModel is created in training
            # mode around a base model that from_pretrained left in eval mode, and layers in eval mode skip
            # activation checkpointing, which would keep every layer's activations (bench/README.md).
            model.train()
        if self._graphed is None:
            params = [p for p in model.parameters() if p.requires_grad]
            self._graphed = GraphedStep(params, lambda batch, items: self.compute_loss(model, batch,
                                                                                    num_items_in_batch=items),
                                        on_capture=self.capture_hooks)
        return self._graphed(self._prepare_inputs(inputs), num_items_in_batch)


def build_trainer(model, args, tokenizer, train_dataset, eval_dataset, plan=None, callbacks=()):
    """The run's DojoTrainer: the plan's collator and step (plan omitted: the one the args and the model's config
    give), the optimizer (LoRA+ groups, else the Trainer's AdamW) and the guards."""
    from utils.model import build_optimizer
    if plan is None:
        lengths = [len(row["input_ids"]) for row in train_dataset] if args.memory_budget_gb else None
        plan = build_plan(args, model.config, lengths)
    return DojoTrainer(
        model=model, args=args, plan=plan, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=build_collator(plan, tokenizer), processing_class=tokenizer,
        optimizers=(build_optimizer(model, args), None),
        callbacks=[StopOnNonFiniteLoss(), ProgressFile(), *offload_callbacks(plan.offload), *callbacks],
    )

