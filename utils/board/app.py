"""Build the board's gradio Blocks: one tab per page."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no usage report to a server

import gradio as gr  # noqa: E402

from utils.board import tab_chat, tab_data, tab_runs, tab_train  # noqa: E402


def build_app(output_root) -> gr.Blocks:
    with gr.Blocks(title="Dojo board") as app:
        gr.Markdown(f"# Dojo board\nRuns under `{output_root}` · the same code paths as `main_train.py` and "
                    "`inference.py`.")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                tab_chat.build(output_root)
            with gr.Tab("Data", id="data"):
                tab_data.build()
            with gr.Tab("Train", id="train"):
                train = tab_train.build(output_root)
            with gr.Tab("Runs", id="runs") as runs_tab:
                refresh, inputs, outputs = tab_runs.build(output_root, train)
        runs_tab.select(refresh, inputs, outputs)
        app.load(refresh, inputs, outputs)
    return app
