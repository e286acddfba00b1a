"""The project's own captioned dataset: coloured shapes on a black background.

Deterministic from a seed, rendered once (4x supersampled, then box-filtered down, so edges
are anti-aliased) and cached under `data/` as safetensors. Each image has one object with
two attributes, a colour and a shape, and a caption that names both:
"a red circle on a black background". Because the attributes are known, we can judge
whether a *generated* image follows its prompt (see `lib_cfg.evaluation`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

VERSION = 1  # bump when the rendering changes, so stale caches are not reused
COLORS: Dict[str, Tuple[int, int, int]] = {  # six hues 60 degrees apart: far apart for the judge
    "red": (230, 30, 30), "yellow": (235, 225, 30), "green": (30, 200, 40),
    "cyan": (30, 220, 230), "blue": (40, 70, 240), "magenta": (225, 40, 220),
}
SHAPES: List[str] = ["circle", "square", "triangle"]
ATTRIBUTES = {"color": list(COLORS), "shape": SHAPES}
TEMPLATES = [  # the first one is the canonical prompt used for evaluation
    "a {color} {shape} on a black background",
    "a {color} {shape}",
    "a picture of a {color} {shape}",
    "a small {color} {shape} on black",
]


def caption(color: str, shape: str, template: int = 0) -> str:
    return TEMPLATES[template].format(color=color, shape=shape)


def all_prompts() -> List[Tuple[str, Dict[str, str]]]:
    """Every (canonical prompt, attributes) pair: one per colour x shape."""
    return [(caption(c, s), {"color": c, "shape": s}) for s in SHAPES for c in COLORS]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Tuple[float, float, float, float], fill) -> None:
    """Draw `shape` filling the box (x0, y0, x1, y1). Shared with the judge's templates."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(color: str, shape: str, size: float, cx: float, cy: float, resolution: int, ss: int = 4) -> np.ndarray:
    """One image as uint8 [H x W x 3]; size, cx, cy are fractions of the image side."""
    big = resolution * ss
    img = Image.new("RGB", (big, big), (0, 0, 0))
    half = size * big / 2
    draw_shape(ImageDraw.Draw(img), shape, (cx * big - half, cy * big - half, cx * big + half, cy * big + half),
               COLORS[color])
    return np.asarray(img.resize((resolution, resolution), Image.BOX))


def generate(n: int, resolution: int, seed: int = 0):
    """n random images: (uint8 images [n x 3 x H x W], color idx [n], shape idx [n], template idx [n])."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(len(COLORS), size=n)
    shapes = rng.integers(len(SHAPES), size=n)
    templates = rng.integers(len(TEMPLATES), size=n)
    sizes = rng.uniform(0.5, 0.75, size=n)  # large enough that the shape reads at 16x16
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    names = list(COLORS)
    for i in range(n):
        margin = sizes[i] / 2 + 0.04
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        images[i] = render(names[colors[i]], SHAPES[shapes[i]], sizes[i], cx, cy, resolution)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(colors),
            torch.from_numpy(shapes), torch.from_numpy(templates))


class SyntheticShapes(torch.utils.data.Dataset):
    """Items are (image [3 x H x W] in [-1, 1], {"text", "color", "shape"}), as in the lesson."""

    def __init__(self, images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor, templates: torch.Tensor):
        self.images, self.colors, self.shapes, self.templates = images, colors, shapes, templates
        names = list(COLORS)
        self.captions = [caption(names[c], SHAPES[s], k) for c, s, k in zip(colors.tolist(), shapes.tolist(),
                                                                              templates.tolist())]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float() / 127.5 - 1.0
        return x, {"text": self.captions[i], "color": list(COLORS)[int(self.colors[i])],
                   "shape": SHAPES[int(self.shapes[i])]}

    def subset(self, index: torch.Tensor) -> "SyntheticShapes":
        return SyntheticShapes(self.images[index], self.colors[index], self.shapes[index], self.templates[index])


def load_synthetic(n: int, resolution: int, seed: int, data_dir: str, verbose: bool = True) -> SyntheticShapes:
    """Render (or load from the cache under data_dir) n images at `resolution`."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(data_dir, f"synthetic-shapes_v{VERSION}_n{n}_r{resolution}_s{seed}.safetensors")
    if os.path.exists(path):
        t = load_file(path)
    else:
        if verbose:
            print(f"rendering {n} synthetic images at {resolution}x{resolution} -> {path}")
        images, colors, shapes, templates = generate(n, resolution, seed)
        t = {"images": images, "colors": colors, "shapes": shapes, "templates": templates}
        os.makedirs(data_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file(t, tmp)
        os.replace(tmp, path)  # atomic: a half-written cache is never picked up
    return SyntheticShapes(t["images"], t["colors"], t["shapes"], t["templates"])
