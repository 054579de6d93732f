"""Fine-tune a chat model: python main_train.py [CONFIG] [--field value ...]

Reads top to bottom: args -> tokenizer -> data -> model -> trainer -> save. Every builder lives in utils/.
"""
import json
import sys
import time
from pathlib import Path

import utils  # noqa: F401  (first: silences harmless library warnings at startup, see utils/__init__.py)
from utils import preference
from utils.config import ConfigError, parse_args
from utils.data import DataError, build_datasets
from utils.memory import estimate_for_run, measured_peak, prefer_expandable_segments, reset_measured_peak
from utils.model import apply_peft, build_model, compile_layers, count_parameters
from utils.step_plan import build_plan, model_config
from utils.run_folder import RunIdentity, claim_output_dir, mark_finished, plan_run, rank0, refuse_foreign, train
from utils.save import plot_loss_curve, save_outputs, trainable_snapshot, verify_outputs
from utils.score import finish_score, score_held_out
from utils.train_log import add_progress, run_summary
from utils.tokenizer import build_tokenizer
from utils.trainer import CheckpointSaveError, NonFiniteLossError, build_trainer


def log(message: str) -> None:
    if rank0():
        print(f"[dojo] {message}", flush=True)


def main(argv=None, instrument=None):
    """Run one training job; returns the Trainer (tests inspect its model and log), None when nothing trained.
    instrument: a function given the Trainer before training (bench/user_run_memory.py attaches its hooks)."""
    args = parse_args(argv, check_files=True)  # every bad field at once, before anything is loaded or written
    if allocator := prefer_expandable_segments():
        log(allocator)
    plan = plan_run(args)
    if plan.finished:
        log(f"run {plan.run_id} in {args.output_dir} already finished; nothing to train (raise max_steps to train "
            "further, or choose another output_dir for a new run)")
        return None
    try:
        refuse_foreign(args, plan)
    except FileExistsError as err:
        if not args.dry_run:
            raise
        log(f"note (a real run would stop here): {err}")  # a dry run writes nothing, so it goes on

    tokenizer, template_name, template_reason = build_tokenizer(args)
    log(f"template: {template_name} ({template_reason})")
    if args.stage != "sft":  # DPO, KTO, ORPO, SimPO, reward models: the same steps through trl's trainers
        return preference.run(args, tokenizer, template_name, plan, log)

    # Data is validated and encoded before anything is written, so bad input leaves output_dir untouched.
    train_set, eval_set, score_set = build_datasets(args, tokenizer, template_name, log)
    # What runs in each step, from the switches and the model's config (read, no weights loaded); memory_budget_gb
    # sizes micro_batch_max_tokens from the samples' lengths here.
    lengths, config = [len(ids) for ids in train_set["input_ids"]], model_config(args, len(tokenizer))
    step_plan = build_plan(args, config, lengths, len(tokenizer), eval_data=eval_set is not None)
    log(f"plan: {step_plan.describe()}")
    if args.dry_run:
        log(estimate_for_run(args, lengths, config, len(tokenizer), step_plan))
        log("dry run: config, tokenizer and data are valid; stopping before the model is loaded")
        return None

    if rank0():
        if moved := claim_output_dir(args, plan):
            log(moved)
        step_plan.save(args.output_dir)

    model = build_model(args, vocab_size=len(tokenizer))
    model = compile_layers(apply_peft(model, args), args)
    trainable, total = count_parameters(model)
    log(f"model: {args.train_mode}{' + DoRA' if args.use_dora else ''}, trainable {trainable:,} of {total:,} "
        f"parameters ({100 * trainable / total:.2f}%)")
    snapshot = trainable_snapshot(model)
    score_before = score_held_out(model, tokenizer, template_name, score_set if args.score_before else None, args,
                                  "before training", log)

    trainer = build_trainer(model, args, tokenizer, train_set, eval_set, step_plan,
                            callbacks=[RunIdentity(plan.run_id)])
    add_progress(trainer)
    if instrument is not None:
        instrument(trainer)
    reset_measured_peak()
    started = time.perf_counter()
    train(trainer, plan, log)
    train_seconds = time.perf_counter() - started
    if peak := measured_peak():  # on a GPU: compare with the prediction of --dry_run / memory_budget_gb
        log(peak)
    if eval_set is not None and not any("eval_loss" in h and h["step"] == trainer.state.global_step
                                        for h in trainer.state.log_history):
        trainer.evaluate()

    score_after = score_held_out(trainer.model, tokenizer, template_name, score_set, args, "after training", log)

    save_outputs(trainer, tokenizer, args, template_name)
    if trainer.is_world_process_zero():
        if not plot_loss_curve(trainer.state.log_history, Path(args.output_dir) / "loss_curve.png"):
            log(f"no loss curve: no loss was logged ({trainer.state.global_step} steps, logging_steps "
                f"{args.logging_steps})")
        (Path(args.output_dir) / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        finish_score(args.output_dir, score_before, score_after, log)
        log(verify_outputs(args, snapshot))
        log(run_summary(trainer, train_seconds, args.output_dir))
        log(f"done: {args.output_dir}. Chat with it: python inference.py --model_name_or_path "
            + (f"{args.model_name_or_path} --adapter_path {args.output_dir}" if args.train_mode != "full"
               else args.output_dir))
        mark_finished(args.output_dir, plan, trainer.state.global_step)  # last: a run stopped before this resumes
    return trainer


def cli(argv=None) -> int:
    """The command line: errors become `error: ...` lines on stderr and an exit code, 2 for bad input (nothing was
    written), 1 for a run that stopped (checkpoints already complete are kept)."""
    try:
        main(argv)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        for line in err.problems if isinstance(err, ConfigError) else [str(err)]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except (CheckpointSaveError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk or a folder made read-only while the run writes its final outputs
        print(f"error: {err.strerror or err}: {err.filename or ''}. Checkpoints already complete are kept: fix it, "
              "then resume with --resume_from_checkpoint true.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
