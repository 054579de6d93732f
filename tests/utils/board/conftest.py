"""The Dojo board served for real on a free local port, driven by Debian's headless Chromium through selenium.

No browser is downloaded at run time: the tests use /usr/bin/chromium and /usr/bin/chromedriver (apt: chromium
chromium-driver, which .ci/run installs) and skip, saying so, when they are absent."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("SE_OFFLINE", "true")  # selenium: never ask Selenium Manager to download a driver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# a closed network floods with retries unless Chromium's own background traffic is off
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1400"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def output_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("board_output")


@pytest.fixture(scope="session")
def etude_run(output_root) -> Path:
    """The default run's Etude model, trained for 80 steps into the board's output root: enough for it to answer
    words (not yet the right ones) and stop, about half a minute on 2 cores."""
    import main_train
    out = output_root / "etude_default"
    main_train.main(["--output_dir", str(out), "--max_steps", "80", "--per_device_train_batch_size", "16",
                     "--learning_rate", "3e-3",
                     "--score_samples", "0", "--eval_data_path", "data/skills/eval.jsonl",
                     "--per_device_eval_batch_size", "64", "--logging_steps", "1", "--report_to", "none",
                     "--disable_tqdm", "true"])
    return out


@pytest.fixture(scope="session")
def board(output_root, etude_run):
    """(url, app): the board over the output root, served by gradio on 127.0.0.1."""
    from utils.board.app import build_app
    app = build_app(output_root)
    app.queue()
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", app
    app.close()


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} are needed "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    profile = tempfile.mkdtemp(prefix="dojo-chromium-")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
