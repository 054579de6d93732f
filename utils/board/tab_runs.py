"""Runs tab: every run folder under the output root with its status, final metrics and before/after score; one
run's config; the loss curves of one or two runs overlaid."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from utils.board import runs
from utils.board.plots import loss_figure

COLUMNS = ["run", "status", "model", "mode", "steps", "last loss", "eval loss", "runtime s", "exact match before %",
           "after %"]


def table(output_root, running_dir=None):
    rows = []
    for run in runs.list_runs(output_root):
        row = runs.summary(output_root, run, running=running_dir is not None and Path(running_dir) == run.resolve())
        row["run"] = str(run.relative_to(output_root))
        rows.append([round(v, 4) if isinstance(v, float) else v for v in (row[c] for c in COLUMNS)])
    return rows


def details(output_root, run_a, run_b):
    """(config of A, loss curves of A and B overlaid)."""
    if not run_a:
        return "", None
    config = Path(run_a, "train_args.json")
    text = json.dumps(json.loads(config.read_text(encoding="utf-8")), indent=1) if config.is_file() else \
        f"{run_a}: no train_args.json (not a main_train.py run folder)"
    histories = {Path(r).name: runs.log_history(r) for r in (run_a, run_b) if r}
    return text, loss_figure(histories)


def build(output_root, train_tab):
    def running_dir():
        run = train_tab.run
        return Path(run.output_dir).resolve() if run is not None and run.running else None

    shown_start = {"run": None}  # the board's latest started run, selected once when the tab is next refreshed

    def refresh(run_a, run_b):
        choices = [str(p) for p in runs.list_runs(output_root)]
        started = train_tab.run.output_dir if train_tab.run is not None else None
        if started in choices and started != shown_start["run"]:
            run_a, shown_start["run"] = started, started
        run_a = run_a if run_a in choices else (choices[0] if choices else None)
        run_b = run_b if run_b in choices else None
        return (table(output_root, running_dir()), gr.update(choices=choices, value=run_a),
                gr.update(choices=[""] + choices, value=run_b or ""), *details(output_root, run_a, run_b))

    gr.Markdown(f"Every run folder under `{output_root}`: status, final metrics, held-out exact match before and "
                "after training (runs started from this board), the config, and loss curves (two runs overlaid).")
    refresh_button = gr.Button("Refresh", elem_id="runs-refresh")
    listing = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="runs-table")
    with gr.Row():
        run_a = gr.Dropdown([], label="run", elem_id="runs-a")
        run_b = gr.Dropdown([], label="overlay another run (optional)", elem_id="runs-b")
    curve = gr.Plot(label="loss", elem_id="runs-curve")
    config = gr.Code(language="json", label="train_args.json", elem_id="runs-config")

    refresh_button.click(refresh, [run_a, run_b], [listing, run_a, run_b, config, curve])
    for dropdown in (run_a, run_b):
        dropdown.input(lambda a, b: details(output_root, a, b), [run_a, run_b], [config, curve])
    return refresh, [run_a, run_b], [listing, run_a, run_b, config, curve]
