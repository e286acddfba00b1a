"""The shapes' hand-written judge: did an image of a coloured shape follow its prompt?

It is transparent on purpose (no learned classifier that guidance could fool):
- foreground = pixels brighter than the black background;
- colour = the palette colour nearest to the mean of the bright foreground pixels;
- shape = the shape whose template, drawn into the foreground's bounding box, best matches
  the foreground (smallest mean absolute difference).
On coloured backgrounds ("synthetic-shapes-bg") the background colour is the median of the border
pixels, and "foreground" means far from it. `layout` finds the same object's position and size.
Datasets without a hand-written judge are judged by their fidelity network (`lib_cfg.labelled`).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from .plotting import to_numpy_images, to_unit
from .synthetic import BG_DIM, COLORS, SHAPES, draw_shape

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32) / 255.0
LIT = 0.3  # a pixel whose brightest channel (in [0, 1]) exceeds this belongs to the object, not the black background


def _template(shape: str, box, resolution: int, ss: int = 4) -> np.ndarray:
    img = Image.new("L", (resolution * ss, resolution * ss), 0)
    draw_shape(ImageDraw.Draw(img), shape, tuple(v * ss for v in box), 255)
    return np.asarray(img.resize((resolution, resolution), Image.BOX), dtype=np.float32) / 255.0


def judge_image(image: np.ndarray, on_background: bool = False) -> Dict[str, Optional[str]]:
    """image: [H x W x 3] float in [0, 1] -> {"color": name or None, "shape": name or None}, and with
    on_background also "background" (the background colour's name)."""
    verdict = {}
    if on_background:  # the background is the median border colour; the object, what lies far from it
        bg = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0)
        verdict["background"] = list(COLORS)[int(((_PALETTE * BG_DIM - bg) ** 2).sum(axis=1).argmin())]
        distance, lit = np.sqrt(((image - bg) ** 2).sum(axis=-1)), 0.25
    else:  # on black, a pixel's distance from the background is its brightest channel
        distance, lit = image.max(axis=-1), LIT
    fg = distance > lit
    if fg.sum() < 3:
        return {"color": None, "shape": None, **verdict}  # nothing drawn: every attribute is missing
    core = distance > 0.6 * distance[fg].max()
    color = list(COLORS)[int(((_PALETTE - image[core].mean(axis=0)) ** 2).sum(axis=1).argmin())]
    ys, xs = np.nonzero(distance > 0.5 * distance[fg].max())
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    soft = np.clip(distance / max(float(distance[core].mean()), 1e-3), 0, 1)
    errors = [np.abs(soft - _template(s, box, image.shape[0])).mean() for s in SHAPES]
    return {"color": color, "shape": SHAPES[int(np.argmin(errors))], **verdict}


def judge(images: torch.Tensor, backgrounds: bool = False) -> List[Dict[str, Optional[str]]]:
    """images: [N x 3 x H x W] in [-1, 1] -> one {"color", "shape"} (+ "background") verdict per image."""
    arr = to_numpy_images(images)
    return [judge_image(a, backgrounds) for a in arr]


def layout(images: torch.Tensor, on_background: bool = False) -> torch.Tensor:
    """Where the object is and how big: images [N x 3 x H x W] in [-1, 1] -> [N x 3] (centre x, centre y,
    size = square root of the object's area), in pixels. An image with no object gives NaNs. The object is
    what is lit on black, or on a coloured background what lies far from the median border colour (as
    `judge_image` finds it)."""
    x = to_unit(images)
    if on_background:
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # [N x 3 x 4W]
        distance = (x - border.median(dim=2).values[:, :, None, None]).pow(2).sum(dim=1).sqrt()
        lit = (distance > 0.25).float()
    else:
        lit = (x.max(dim=1).values > LIT).float()  # [N x H x W]: the object, not the black background
    area = lit.sum(dim=(1, 2))
    ys, xs = torch.meshgrid(torch.arange(x.shape[2]).float(), torch.arange(x.shape[3]).float(), indexing="ij")
    cx, cy = (lit * xs).sum(dim=(1, 2)) / area, (lit * ys).sum(dim=(1, 2)) / area
    return torch.stack([cx, cy, area.sqrt()], dim=1).where(area[:, None] > 0, torch.tensor(float("nan")))


def layout_variety(images: torch.Tensor, groups: List[int], on_background: bool = False) -> float:
    """Variety within a prompt that does not count colour or shape: the standard deviation of the object's
    centre x, centre y and size (`layout`) among images of one group (prompt), averaged over the three and
    over the groups, in pixels. 0: every sample of a prompt puts the same-sized object in the same place."""
    where, g = layout(images, on_background), torch.tensor(groups)
    found = ~where.isnan().any(dim=1)  # images with nothing drawn have no position
    values = [where[(g == k) & found].std(dim=0).mean() for k in g.unique() if ((g == k) & found).sum() > 1]
    return float(torch.stack(values).mean()) if values else 0.0
