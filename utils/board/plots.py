"""matplotlib figures for the board (drawn on the server, sent as images: nothing is fetched by the page)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.board.runs import loss_points  # noqa: E402


def loss_figure(histories: dict[str, list[dict]]):
    """Train (solid) and eval (dashed) loss of one or more runs on one set of axes; None when nothing is logged."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = 0
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"
        for series, points in loss_points(history).items():
            if points:
                ax.plot(*zip(*points), color=color, linestyle="-" if series == "train" else "--",
                        marker="." if len(points) < 50 else None, label=f"{name} {series}")
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss (supervised tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # gradio renders the figure object; closing keeps pyplot from holding every one
    return fig


def length_histogram(lengths: list[int], max_len: int):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="C0")
    ax.axvline(max_len, color="C3", linestyle="--", label=f"max_len {max_len}")
    ax.set_xlabel("tokens per sample (untruncated)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
