"""Data tab: a data file seen through a tokenizer and template, as main_train.py would encode it.

Reading and validation are utils/data.py's load_conversations (so the FILE:LINE errors are main_train's own),
encoding is encode_conversations and chat_template.encode, the tokenizer comes from utils/tokenizer.py's
build_tokenizer: the page shows what training would see, never a second implementation of it.
"""
from __future__ import annotations


import gradio as gr

import chat_template
from utils.board.plots import length_histogram
from train_args.base import TrainArgs
from utils.data import DataError, load_conversations, encode_conversations
from utils.tokenizer import build_tokenizer

UNLIMITED = 1 << 30  # encode without truncation to measure every sample's full length
SUPERVISED = "supervised"


def load_tokenizer_and_template(tokenizer_path: str, template: str, trust_remote_code: bool):
    # TrainArgs' own defaults for every other field the tokenizer step reads (default_system, template_mismatch, ...)
    args = TrainArgs(model_name_or_path=tokenizer_path, template_name=template or None,
                     trust_remote_code=trust_remote_code, output_dir=None, report_to="none")
    tokenizer, template_name, _ = build_tokenizer(args)
    return tokenizer, template_name


def spans(input_ids, labels, tokenizer) -> list[tuple[str, str | None]]:
    """The sample's runs labelled for the highlighter: the highlighted form of the training log's [[ ]]."""
    return [(text, SUPERVISED if supervised else None)
            for text, supervised in chat_template.supervised_runs(input_ids, labels, tokenizer)]


class DataTab:
    def __init__(self):
        self.loaded = None  # (conversations, tokenizer, template, max_len, train_on)

    def open(self, data_path, tokenizer_path, template, max_len, train_on, trust_remote_code):
        """Validate and encode the file; (summary, histogram, error box) and the first sample."""
        self.loaded = None
        try:
            conversations = load_conversations(data_path.strip())
            tokenizer, template_name = load_tokenizer_and_template(tokenizer_path.strip(), template,
                                                                   trust_remote_code)
            full, _ = encode_conversations(conversations, tokenizer, template_name, UNLIMITED, train_on)
            _, kept = encode_conversations(conversations, tokenizer, template_name, int(max_len), train_on)
        except (DataError, ValueError, OSError) as err:
            return f"**error:** {err}", None, gr.update(value=str(err), visible=True), *self.show(0)
        lengths = [len(ids) for ids in full["input_ids"]]
        truncated = sum(n > max_len for n in lengths)
        self.loaded = (conversations, tokenizer, template_name, int(max_len), train_on)
        text = (f"{len(conversations)} samples, template **{template_name}**; at max_len {int(max_len)}: {kept}; "
                f"**{truncated} truncated** (longer than {int(max_len)} tokens), longest {max(lengths)}")
        return text, length_histogram(lengths, int(max_len)), gr.update(value="", visible=False), *self.show(0)

    def show(self, index):
        """Sample `index` (0-based, clamped) with its supervised tokens highlighted."""
        if self.loaded is None:
            return [], "", 0
        conversations, tokenizer, template_name, max_len, train_on = self.loaded
        index = max(0, min(int(index or 0), len(conversations) - 1))
        conversation = conversations[index]
        try:
            enc = chat_template.encode(conversation.messages, tokenizer, template_name, max_len=max_len,
                                       train_on=train_on)
        except chat_template.ChatFormatError as err:
            return [], f"{conversation.source}: {err}", index
        supervised = sum(label != chat_template.IGNORE_INDEX for label in enc["labels"])
        caption = (f"sample {index + 1} of {len(conversations)} · {conversation.source} · "
                   f"{len(enc['input_ids'])} tokens, {supervised} supervised")
        return spans(enc["input_ids"], enc["labels"], tokenizer), caption, index


def build():
    tab = DataTab()
    gr.Markdown("Open a data file as `main_train.py` reads it: the same validation (errors name `FILE:LINE` and the "
                "field), the same template and truncation. Supervised tokens (those the loss is computed on) are "
                "highlighted.")
    with gr.Row():
        data_path = gr.Textbox("data/skills/train.jsonl", label="data file or folder", elem_id="data-path")
        tokenizer_path = gr.Textbox("data/skills/tokenizer", label="tokenizer (a model or tokenizer folder)",
                                    elem_id="data-tokenizer")
        template = gr.Dropdown(["", *sorted(chat_template.TEMPLATES)], value="etude",
                               label="template (empty: detected)", elem_id="data-template")
    with gr.Row():
        max_len = gr.Number(64, label="max_len", precision=0, elem_id="data-max-len")
        train_on = gr.Dropdown(["all", "last"], value="all", label="train_on")
        trust = gr.Checkbox(False, label="trust_remote_code (runs code from the folder: only for one you trust)")
        open_button = gr.Button("Open", variant="primary", elem_id="data-open")
    errors = gr.Textbox(label="error (as main_train.py reports it)", visible=False, elem_id="data-error")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Row():
        previous = gr.Button("◀ previous", elem_id="data-prev")
        index = gr.Number(0, label="sample (0-based)", precision=0, elem_id="data-index")
        following = gr.Button("next ▶", elem_id="data-next")
    caption = gr.Markdown(elem_id="data-caption")
    sample = gr.HighlightedText(label="sample (supervised tokens highlighted)", color_map={SUPERVISED: "green"},
                                combine_adjacent=True, elem_id="data-sample")
    histogram = gr.Plot(label="token lengths", elem_id="data-histogram")

    open_button.click(tab.open, [data_path, tokenizer_path, template, max_len, train_on, trust],
                      [summary, histogram, errors, sample, caption, index])
    index.submit(tab.show, index, [sample, caption, index])
    previous.click(lambda i: tab.show((i or 0) - 1), index, [sample, caption, index])
    following.click(lambda i: tab.show((i or 0) + 1), index, [sample, caption, index])
    return tab
