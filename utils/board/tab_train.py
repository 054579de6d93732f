"""Train tab: the TrainArgs form, validated as the CLI validates it, then main_train.py in a subprocess with its
command shown, live log, progress with ETA, the loss curve as it trains, and a stop that keeps a checkpoint."""
from __future__ import annotations

import gradio as gr

from utils.board import form
from utils.board.plots import loss_figure
from utils.board.runner import BoardError, TrainRun, build_argv, command_line, parse_extra, validate
from utils.board.runs import log_history
from utils.progress import read_progress

REMOTE_CODE_WARNING = ("**Warning:** trust_remote_code runs Python code shipped inside the model folder, with your "
                       "permissions. Tick it only for a model whose code you have read or trust.")


def _input(f, value):
    k = form.kind(f)
    common = dict(label=f.name, info=f.metadata.get("help", ""), value=value, elem_id=f"field-{f.name}")
    if k == "checkbox":
        return gr.Checkbox(**common)
    if k == "tristate":
        return gr.Dropdown(["auto", "true", "false"], **common)
    if k == "choice":
        return gr.Dropdown(form.CHOICES[f.name], **common)
    return gr.Textbox(max_lines=1, **common)


def _progress_text(run: TrainRun) -> str:
    steps = [p for p in read_progress(run.output_dir) if p.get("max_steps")]
    if not steps:
        return f"**{run.state()}** — loading (model, data) …"
    last = steps[-1]
    step, total, elapsed = last["step"], last["max_steps"], last["elapsed_s"]
    done = step / total if total else 0.0
    eta = elapsed / step * (total - step) if step else float("nan")
    bar = "█" * int(20 * done) + "░" * (20 - int(20 * done))
    return (f"**{run.state()}** — step {step} / {total} `{bar}` {100 * done:.0f}% · elapsed {elapsed:.0f} s · "
            f"ETA {eta:.0f} s")


class TrainTab:
    """The tab's one run at a time (a board starts one training process at once)."""

    def __init__(self, output_root):
        self.output_root = output_root
        self.run: TrainRun | None = None

    def start(self, preset, extra, *values):
        if self.run is not None and self.run.running:
            return "", "**a run is in progress**: stop it or wait for it to end before starting another"
        try:
            if preset not in form.presets():  # a path here would be a Python file that config loading runs
                raise BoardError(f"preset {preset!r} is not a ready config of train_args/")
            fields = {**form.changed_fields(preset, list(values)), **parse_extra(extra or "")}
            argv = build_argv(preset, fields)
            args = validate(argv)
        except BoardError as err:
            return "", f"**error:** {err}\n\nNothing was started."
        self.run = TrainRun(argv, args.output_dir, self.output_root)
        return command_line(self.run.argv), f"**started** (pid {self.run.proc.pid}): {args.output_dir}"

    def stop(self):
        return self.run.stop() if self.run else "no run started from this board"

    def refresh(self):
        if self.run is None:
            return gr.skip(), gr.skip(), gr.skip()
        figure = loss_figure({"this run": log_history(self.run.output_dir)})
        return _progress_text(self.run), self.run.log_text(), figure


def build(output_root) -> TrainTab:
    tab = TrainTab(output_root)
    fields = form.own_fields()
    inputs = []
    gr.Markdown("A form over every field of `TrainArgs` (train_args/base.py). Start runs "
                "`python main_train.py PRESET --field value ...` (only the fields you changed), after the same checks "
                "the command line makes. Stop saves a checkpoint at the current step: resume with "
                "`--resume_from_checkpoint true`.")
    preset = gr.Dropdown(form.presets(), value="default", label="preset (a ready config of train_args/)",
                         elem_id="train-preset")
    values = dict(zip([f.name for f in fields], form.preset_values("default")))
    for title, section in form.sections(fields):
        with gr.Accordion(title, open=title != "Method"):
            for f in section:
                inputs.append(_input(f, values[f.name]))
                if f.name == "trust_remote_code":
                    warning = gr.Markdown(REMOTE_CODE_WARNING, visible=False)
                    inputs[-1].change(lambda on: gr.update(visible=on), inputs[-1], warning)
    extra = gr.Textbox(label="extra fields (the HF Trainer's own, one '--field value' per line)", lines=2,
                       elem_id="train-extra", placeholder="--max_steps 5\n--disable_tqdm true")
    with gr.Row():
        start_button = gr.Button("Start", variant="primary", elem_id="train-start")
        stop_button = gr.Button("Stop (checkpoint, then end)", elem_id="train-stop")
    command = gr.Textbox(label="command (copy it to run the same from a terminal)", interactive=False,
                         elem_id="train-command")
    status = gr.Markdown(elem_id="train-status")
    progress = gr.Markdown(elem_id="train-progress")
    curve = gr.Plot(label="loss", elem_id="train-curve")
    log = gr.Textbox(label="log", lines=14, max_lines=14, autoscroll=True, interactive=False, elem_id="train-log")

    preset.change(form.preset_values, preset, inputs)
    start_button.click(tab.start, [preset, extra, *inputs], [command, status])
    stop_button.click(tab.stop, None, status)
    gr.Timer(1.0).tick(tab.refresh, None, [progress, log, curve], show_progress="hidden")
    return tab
