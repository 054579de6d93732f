"""Chat tab: one or two results side by side (base vs fine-tuned) answering the same prompt, streamed token by
token, each stopping at its template's end of turn; a toggle shows the exact rendered prompt and its token count."""
from __future__ import annotations

import gradio as gr

from utils.board import chat_model
from utils.board.runs import chat_choices

REMOTE_CODE_WARNING = ("**Warning:** trust_remote_code runs Python code shipped inside the model folder. Tick it only "
                       "for a folder whose code you trust.")


EMPTY_ANSWER = "*(empty: the model ended its turn at once)*"  # shown only; the history keeps the real answer


class ChatTab:
    def __init__(self, output_root):
        self.output_root = output_root
        self.cache: dict[tuple[str, bool], chat_model.ChatModel] = {}  # the last two loaded results

    def get(self, folder: str, trust_remote_code: bool) -> chat_model.ChatModel:
        key = (folder, trust_remote_code)
        if key not in self.cache:
            while len(self.cache) >= 2:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = chat_model.load(folder, trust_remote_code)
        return self.cache[key]

    def send(self, message, folder_a, folder_b, system, temperature, top_p, max_new_tokens, show_prompt, trust,
             history_a, history_b):
        """Stream side A's answer, then side B's, into their chatbots (outputs: chat, status, prompt per side)."""
        histories, shown = [history_a, history_b], [list(history_a), list(history_b)]
        statuses, prompts = ["", ""], ["", ""]
        for side, folder in enumerate((folder_a, folder_b)):
            if not (folder or "").strip():
                continue
            turns = histories[side] + [{"role": "user", "content": message}]
            messages = ([{"role": "system", "content": system}] if system.strip() else []) + turns
            shown[side] = turns + [{"role": "assistant", "content": ""}]
            try:
                chat = self.get(folder.strip(), trust)
                text, count = chat.render(messages)
                prompts[side] = f"{count} tokens, template {chat.template_name}:\n{text}" if show_prompt else ""
                statuses[side] = f"generating with {chat.folder} …"
                answer = ""
                for answer, stopped in chat_model.stream_answer(chat, messages, float(temperature), float(top_p),
                                                                int(max_new_tokens)):
                    shown[side][-1]["content"] = answer or ("…" if stopped is None else EMPTY_ANSWER)
                    statuses[side] = stopped or statuses[side]
                    yield self._outputs(shown, statuses, prompts, histories)
                histories[side] = turns + [{"role": "assistant", "content": answer}]
            except (OSError, ValueError, RuntimeError) as err:
                statuses[side] = f"error: {err}"
                shown[side] = list(turns)
        yield self._outputs(shown, statuses, prompts, histories)

    @staticmethod
    def _outputs(shown, statuses, prompts, histories):
        return (shown[0], shown[1], statuses[0], statuses[1], gr.update(value=prompts[0], visible=bool(prompts[0])),
                gr.update(value=prompts[1], visible=bool(prompts[1])), histories[0], histories[1])


def _side(name: str, choices: list[str], value):
    with gr.Column():
        folder = gr.Dropdown(choices, value=value, allow_custom_value=True, elem_id=f"chat-folder-{name}",
                             label=f"{name.upper()}: a run, a model folder or an adapter folder"
                                   + (" (empty: off)" if name == "b" else ""))
        chat = gr.Chatbot(label=name.upper(), height=320, elem_id=f"chat-{name}")
        status = gr.Markdown(elem_id=f"chat-status-{name}")
        prompt = gr.Textbox(label=f"{name.upper()}: rendered prompt", visible=False, lines=6,
                            elem_id=f"chat-prompt-{name}")
    return folder, chat, status, prompt


def build(output_root) -> ChatTab:
    tab = ChatTab(output_root)
    choices = chat_choices(output_root)
    gr.Markdown("Pick results under the output root (or type any model / adapter folder). The template is the one "
                "the run recorded, else detected as `main_train.py` detects it; answers stop at its end of turn.")
    with gr.Row():
        folder_a, chat_a, status_a, prompt_a = _side("a", choices, choices[0] if choices else None)
        folder_b, chat_b, status_b, prompt_b = _side("b", choices, None)
    with gr.Row():
        system = gr.Textbox(label="system prompt", elem_id="chat-system")
        temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0: greedy)")
        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="top-p")
        max_new_tokens = gr.Slider(1, 2048, value=128, step=1, label="max new tokens", elem_id="chat-max-new")
    with gr.Row():
        show_prompt = gr.Checkbox(False, label="show the rendered prompt and its token count",
                                  elem_id="chat-show-prompt")
        trust = gr.Checkbox(False, label="trust_remote_code")
        refresh = gr.Button("refresh the list of runs")
    warning = gr.Markdown(REMOTE_CODE_WARNING, visible=False)
    message = gr.Textbox(label="message", placeholder="last: apple river", elem_id="chat-message")
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        clear = gr.Button("Clear")
    history_a, history_b = gr.State([]), gr.State([])

    trust.change(lambda on: gr.update(visible=on), trust, warning)
    inputs = [message, folder_a, folder_b, system, temperature, top_p, max_new_tokens, show_prompt, trust,
              history_a, history_b]
    outputs = [chat_a, chat_b, status_a, status_b, prompt_a, prompt_b, history_a, history_b]
    send.click(tab.send, inputs, outputs)
    message.submit(tab.send, inputs, outputs)
    clear.click(lambda: ([], [], "", "", [], []), None, [chat_a, chat_b, status_a, status_b, history_a, history_b])
    refresh.click(lambda: [gr.update(choices=chat_choices(output_root))] * 2, None, [folder_a, folder_b])
    return tab
