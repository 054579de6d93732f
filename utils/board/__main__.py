"""python -m utils.board [--host 127.0.0.1] [--port 7860] [--password ...] [--output_root output]"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.board", description="The Dojo board: a local web page to "
                                "chat with results, inspect data, start and watch runs.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; another than localhost needs --password")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--password", help="required when --host is not localhost (user: dojo); also DOJO_BOARD_PASSWORD")
    p.add_argument("--output_root", default="output", help="the folder whose run folders are listed")
    args = p.parse_args(argv)
    args.password = args.password or os.environ.get("DOJO_BOARD_PASSWORD")
    if args.host not in LOCAL_HOSTS and not args.password:
        p.error(f"--host {args.host} makes the board reachable from other machines (it can start training runs "
                "and read files): give --password too")
    return args


def main(argv=None):
    args = parse_args(argv)
    output_root = Path(args.output_root).resolve()
    os.chdir(REPO)  # the form's relative paths (data/skills/..., output/...) mean what they mean to main_train.py
    from utils.board.app import build_app
    app = build_app(output_root)
    auth = ("dojo", args.password) if args.password else None
    app.queue()
    _, local_url, _ = app.launch(server_name=args.host, server_port=args.port, auth=auth, prevent_thread_lock=True,
                                 quiet=True, share=False)
    print(f"Dojo board: {local_url} (output root {output_root}; Ctrl+C stops)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
