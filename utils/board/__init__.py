"""The Dojo board: a local web page over this repository (python -m utils.board).

Chat with any result, look at data through its template, start and watch runs, compare runs. Built with gradio,
the web library of this field's demos (components for chat, highlighted text and plots, a Python server, no
front-end code to write). Every page calls the same functions as the command line: utils/data.py, utils/tokenizer.py,
chat_template, utils/config.py, main_train.py.
"""
