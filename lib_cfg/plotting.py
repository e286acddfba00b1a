"""Figures: image grids with titles, guidance-scale grids, loss curves."""
from __future__ import annotations

import os
import sys
import textwrap
from typing import List, Optional, Sequence

import matplotlib
import torch

if os.environ.get("MPLBACKEND") is None and "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # scripts and CI have no display (Jupyter keeps its inline backend)
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

from .caption_accuracy import follows_level  # noqa: E402


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[N x 3 x H x W] in [-1, 1] -> the same in [0, 1], float32 on the CPU (what figures and judges read)."""
    return (images.detach().float().cpu().clamp(-1, 1) + 1) / 2


def to_numpy_images(images: torch.Tensor):
    """[N x 3 x H x W] in [-1, 1] -> [N x H x W x 3] floats in [0, 1]."""
    return to_unit(images).permute(0, 2, 3, 1).numpy()


def image_grid_figure(images: torch.Tensor, titles: Optional[Sequence[str]] = None, ncols: Optional[int] = None,
                      suptitle: Optional[str] = None, row_labels: Optional[Sequence[str]] = None,
                      col_labels: Optional[Sequence[str]] = None, cell: float = 1.3):
    """A matplotlib figure of images laid out in a grid, each with an optional (wrapped) title."""
    arr = to_numpy_images(images)
    n = len(arr)
    ncols = ncols or min(n, 8)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + (1.2 if row_labels else 0), cell * nrows + 0.4),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(arr[i], interpolation="nearest")
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(titles[i], 18)), fontsize=7)
    if row_labels:
        for r, label in enumerate(row_labels):
            axes[r, 0].set_ylabel("\n".join(textwrap.wrap(label, 16)), fontsize=7, rotation=0, ha="right", va="center")
    if col_labels:
        for c, label in enumerate(col_labels):
            axes[0, c].set_title(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def save_image_grid(images: torch.Tensor, path: str, dpi: int = 100, **kwargs) -> str:
    fig = image_grid_figure(images, **kwargs)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def guidance_grid_figure(images: torch.Tensor, prompts: List[str], scales: Sequence[float], suptitle: str = None):
    """images: [P*S x 3 x H x W] ordered prompt-major (all scales of prompt 0 first)."""
    return image_grid_figure(images, ncols=len(scales), row_labels=prompts,
                             col_labels=[f"s = {s:g}" for s in scales], suptitle=suptitle)


def loss_curve_figure(history, smooth: int = 50, snr_gamma: float = 0.0):
    """The training history: the loss, and beside it, when the run measured it, the caption accuracy
    (`lib_cfg.caption_accuracy`) with chance and the level from which the model follows its captions.
    snr_gamma: the run's (config.snr_gamma); when > 0 the training loss is Min-SNR-weighted, validation never
    is, and the legend says so."""
    captions = bool(history.get("caption_step"))
    fig, axes = plt.subplots(1, 2 if captions else 1, figsize=(11 if captions else 6, 3.2), squeeze=False)
    ax = axes[0, 0]
    loss = torch.tensor(history["loss"])
    train = f"train loss, Min-SNR-{snr_gamma:g} weighted" if snr_gamma else "train loss"
    ax.plot(history["step"], loss.numpy(), alpha=0.25, lw=0.8, label=f"{train} (per step)")
    if len(loss) >= smooth:
        k = torch.ones(smooth) / smooth
        sm = torch.nn.functional.conv1d(loss[None, None], k[None, None]).flatten()
        ax.plot(history["step"][smooth - 1:], sm.numpy(), lw=1.5, label=f"{train} ({smooth}-step mean)")
    if history.get("val_loss"):
        ax.plot(history["val_step"], history["val_loss"], "o-", lw=1.5, label="validation: plain MSE on eps (EMA weights)")
    ax.set_xlabel("step"), ax.set_ylabel("loss (log scale)"), ax.set_yscale("log")
    ax.legend(fontsize=8), ax.grid(alpha=0.3)
    if captions:
        ax, chance = axes[0, 1], history["caption_chance"][-1]
        ax.plot(history["caption_step"], history["caption_accuracy"], "o-", color="C3",
                label="caption accuracy (validation images)")
        ax.axhline(chance, ls=":", color="gray", label=f"chance (1 in {round(1 / chance)})")
        ax.axhline(follows_level(chance), ls="--", color="C2", label="follows its captions")
        ax.set_xlabel("step"), ax.set_ylabel("share of images"), ax.set_ylim(0, 1)
        ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
