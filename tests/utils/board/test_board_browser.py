"""The Dojo board's pages, driven in headless Chromium as a user drives them; a screenshot of each is saved to
pytest's tmp dir (DOJO_BOARD_SCREENSHOTS=folder: there instead, e.g. utils/board/screenshots for the README)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TIMEOUT = 150  # seconds for a page action that trains or loads a model (2 shared CPU cores)


@pytest.fixture
def page(browser, board, tmp_path):
    """The board opened afresh; page.screenshot(name) keeps what the user saw."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, _ = board
    browser.get(url)
    wait = WebDriverWait(browser, TIMEOUT, poll_frequency=0.5)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))

    class Page:
        driver = browser

        @staticmethod
        def tab(name):
            next(t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name).click()

        @staticmethod
        def el(elem_id, css=""):
            return browser.find_element(By.CSS_SELECTOR, f"#{elem_id} {css}".strip())

        @staticmethod
        def type(elem_id, text):
            box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
            box.clear()
            box.send_keys(text)

        @staticmethod
        def until(condition, message):
            return wait.until(lambda d: condition(), message=message)

        @staticmethod
        def screenshot(name, scroll_to=None):
            if scroll_to:
                browser.execute_script("arguments[0].scrollIntoView()", Page.el(scroll_to))
            folder = Path(os.environ.get("DOJO_BOARD_SCREENSHOTS") or tmp_path)
            folder.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(folder / f"{name}.png"))
            if os.environ.get("DOJO_BOARD_SCREENSHOTS"):  # for the README: smaller
                from PIL import Image
                image = Image.open(folder / f"{name}.png")
                image.thumbnail((900, 900))
                image.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{name}.png", optimize=True)

    return Page


def test_page_fetches_nothing_beyond_the_local_server(page, board):
    """Offline: no CDN, no fonts, no analytics; every request the page made went to the board itself."""
    import json
    url, _ = board
    page.tab("Data")
    requests = [json.loads(entry["message"])["message"] for entry in page.driver.get_log("performance")]
    urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
    web = {u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))}  # not the browser's chrome:// pages
    assert url in web and {u for u in web if not u.startswith(url)} == set()


def test_chat_tab_streams_the_default_runs_answer_and_stops(page, etude_run):
    page.tab("Chat")
    page.until(lambda: etude_run.name in page.el("chat-folder-a", "input").get_attribute("value"),
               "the trained run is listed and picked for side A")
    page.type("chat-folder-b", str(etude_run))  # the same model on side B: both answer the same prompt
    page.el("chat-show-prompt", "input").click()
    page.type("chat-message", "last: apple river")
    page.el("chat-send").click()
    status = page.until(lambda: "stopped at" in page.el("chat-status-a").text and page.el("chat-status-a").text,
                        "the answer ends and says why")
    assert "new tokens" in status
    page.until(lambda: "stopped at" in page.el("chat-status-b").text, "side B answers the same prompt and ends")
    assert page.el("chat-status-b").text == status  # same model, greedy: the same answer
    prompt = page.el("chat-prompt-a", "textarea").get_attribute("value")
    assert "template etude" in prompt and "last: apple river" in prompt
    assert "<|im_start|>assistant" in prompt  # the exact rendered prompt, generation prompt included
    answer = page.driver.find_elements("css selector", "#chat-a .bot-row, #chat-a .assistant-row")
    assert "last: apple river" in page.el("chat-a").text and answer and answer[-1].text.strip()
    assert "empty" not in answer[-1].text  # the model wrote words before its end of turn
    page.screenshot("chat")


def test_data_tab_highlights_the_supervised_answer_of_a_known_sample(page):
    page.tab("Data")
    page.el("data-open").click()  # defaults: data/skills/train.jsonl through the skills tokenizer, etude template
    page.until(lambda: "samples" in page.el("data-summary").text, "the file is read and encoded")
    highlighted = [e.text for e in page.driver.find_elements("css selector", "#data-sample .token.highlighted .text")]
    # train.jsonl line 1: reverse: stone mountain bridge -> the answer and its end of turn carry the loss, nothing else
    assert highlighted == ["bridge mountain stone<|im_end|>"]
    assert "reverse: stone mountain bridge" in page.el("data-sample").text
    assert "0 truncated" in page.el("data-summary").text
    page.screenshot("data", scroll_to="data-summary")


def test_data_tab_shows_main_trains_file_line_error(page, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}]}\n')
    page.tab("Data")
    page.type("data-path", str(bad))
    page.el("data-open").click()
    error = page.until(lambda: page.el("data-error", "textarea").get_attribute("value"), "the error is shown")
    assert error.startswith(f"{bad}:2: field 'role'")


def test_bad_field_shows_its_error_and_starts_nothing(page, board, output_root):
    before = sorted(p.name for p in output_root.iterdir())
    page.tab("Train")
    page.type("field-max_len", "sixty-four")
    page.el("train-start").click()
    status = page.until(lambda: "error" in page.el("train-status").text and page.el("train-status").text,
                        "the form's error is shown")
    assert "argument --max_len" in status and "invalid int value: 'sixty-four'" in status
    assert "Nothing was started" in status
    assert sorted(p.name for p in output_root.iterdir()) == before
    assert page.el("train-command", "textarea").get_attribute("value") == ""
    page.screenshot("train-error", scroll_to="train-start")


def test_five_step_run_from_the_train_tab_finishes_and_its_curve_is_in_the_runs_tab(page, output_root):
    out = output_root / "from_board"
    page.tab("Train")
    page.type("field-output_dir", str(out))
    page.type("field-logging_steps", "1")
    page.type("field-per_device_train_batch_size", "8")
    page.type("field-score_samples", "0")
    page.type("train-extra", "--max_steps 5\n--report_to none\n--per_device_eval_batch_size 64")
    page.el("train-start").click()
    command = page.until(lambda: page.el("train-command", "textarea").get_attribute("value"), "the command shown")
    assert command.startswith("python main_train.py default ") and f"--output_dir {out}" in command
    assert "--max_steps 5" in command
    page.until(lambda: "finished" in page.el("train-progress").text, "the run finishes")
    assert "step 5 / 5" in page.el("train-progress").text
    page.until(lambda: page.driver.find_elements("css selector", "#train-curve img"), "the loss curve is drawn")
    page.screenshot("train", scroll_to="train-command")
    assert (out / "log_history.json").is_file()

    page.tab("Runs")
    page.until(lambda: "from_board" in page.el("runs-table").text, "the run is listed")
    page.until(lambda: page.el("runs-a", "input").get_attribute("value") == str(out), "the new run is selected")
    page.until(lambda: page.driver.find_elements("css selector", "#runs-curve img"), "its loss curve is shown")
    assert "finished" in page.el("runs-table").text
    from selenium.webdriver.common.keys import Keys
    page.type("runs-b", "etude_default")  # overlay the fixture's run
    page.el("runs-b", "input").send_keys(Keys.ENTER)
    page.until(lambda: "etude_default" in page.el("runs-b", "input").get_attribute("value"), "a second run picked")
    page.until(lambda: "processing" not in page.el("runs-curve").text and page.el("runs-curve", "img"),
               "both curves drawn")
    page.screenshot("runs")
