"""The project's own captioned dataset: coloured shapes on a black background.

Deterministic from a seed, rendered once (4x supersampled, then box-filtered down, so edges
are anti-aliased) and cached under `data/` as safetensors. Each image has one object with
two attributes, a colour and a shape, and a caption that names both:
"a red circle on a black background". Because the attributes are known, we can judge
whether a *generated* image follows its prompt (see `lib_cfg.evaluation`).

The variant "synthetic-shapes-bg" (`backgrounds=True`) paints the background in a dimmed palette
colour other than the object's: "a red circle on a blue background". Two colours in one caption
make a binding test: "a red circle on a blue background" and "a blue circle on a red background"
use the same words, and only an encoder + model that keep track of which word goes with which
noun can draw both right.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

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
BG_TEMPLATES = [  # with a coloured background (the first one is canonical)
    "a {color} {shape} on a {background} background",
    "a picture of a {color} {shape} on {background}",
]
BG_DIM = 0.4  # backgrounds are the palette colour at 40%: the object stays the brightest thing


def caption(color: str, shape: str, template: int = 0, background: str = None) -> str:
    if background is None:
        return TEMPLATES[template].format(color=color, shape=shape)
    return BG_TEMPLATES[template].format(color=color, shape=shape, background=background)


def background_rgb(background: str) -> Tuple[int, int, int]:
    return tuple(int(round(v * BG_DIM)) for v in COLORS[background])


def all_prompts() -> List[Tuple[str, Dict[str, str]]]:
    """Every (canonical prompt, attributes) pair: one per colour x shape."""
    return [(caption(c, s), {"color": c, "shape": s}) for s in SHAPES for c in COLORS]


def bg_prompts() -> List[Tuple[str, Dict[str, str]]]:
    """Every (canonical prompt, attributes) pair on coloured backgrounds: colour x other background x shape, so
    every prompt's colour-swapped twin is in the set too."""
    return [(caption(c, s, 0, b), {"color": c, "shape": s, "background": b})
            for s in SHAPES for c in COLORS for b in COLORS if b != c]


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


def render(color: str, shape: str, size: float, cx: float, cy: float, resolution: int, ss: int = 4,
           background: str = None) -> np.ndarray:
    """One image as uint8 [H x W x 3]; size, cx, cy are fractions of the image side."""
    big = resolution * ss
    img = Image.new("RGB", (big, big), (0, 0, 0) if background is None else background_rgb(background))
    half = size * big / 2
    draw_shape(ImageDraw.Draw(img), shape, (cx * big - half, cy * big - half, cx * big + half, cy * big + half),
               COLORS[color])
    return np.asarray(img.resize((resolution, resolution), Image.BOX))


def generate(n: int, resolution: int, seed: int = 0, backgrounds: bool = False):
    """n random images: (uint8 images [n x 3 x H x W], color idx [n], shape idx [n], template idx [n],
    background idx [n]: -1 for black)."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(len(COLORS), size=n)
    shapes = rng.integers(len(SHAPES), size=n)
    templates = rng.integers(len(BG_TEMPLATES if backgrounds else TEMPLATES), size=n)
    sizes = rng.uniform(0.5, 0.75, size=n)  # large enough that the shape reads at 16x16
    # A background colour other than the object's: shift by 1..5 around the palette.
    bgs = (colors + rng.integers(1, len(COLORS), size=n)) % len(COLORS) if backgrounds else np.full(n, -1)
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    names = list(COLORS)
    for i in range(n):
        margin = sizes[i] / 2 + 0.04
        cx, cy = rng.uniform(margin, 1 - margin, size=2)
        images[i] = render(names[colors[i]], SHAPES[shapes[i]], sizes[i], cx, cy, resolution,
                           background=names[bgs[i]] if bgs[i] >= 0 else None)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(colors),
            torch.from_numpy(shapes), torch.from_numpy(templates), torch.from_numpy(bgs))


class SyntheticShapes(torch.utils.data.Dataset):
    """Items are (image [3 x H x W] in [-1, 1], {"text", "color", "shape"} (+ "background")), as in the lesson."""

    def __init__(self, images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor, templates: torch.Tensor,
                 backgrounds: torch.Tensor = None):
        self.images, self.colors, self.shapes, self.templates = images, colors, shapes, templates
        self.backgrounds = torch.full_like(colors, -1) if backgrounds is None else backgrounds
        names = list(COLORS)
        self.captions = [caption(names[c], SHAPES[s], k, names[b] if b >= 0 else None) for c, s, k, b in zip(
            colors.tolist(), shapes.tolist(), templates.tolist(), self.backgrounds.tolist())]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float() / 127.5 - 1.0
        meta = {"text": self.captions[i], "color": list(COLORS)[int(self.colors[i])], "shape": SHAPES[int(self.shapes[i])]}
        if self.backgrounds[i] >= 0:
            meta["background"] = list(COLORS)[int(self.backgrounds[i])]
        return x, meta

    @property
    def labels(self) -> Dict[str, torch.Tensor]:
        """Class indices [N] of each attribute: {"color", "shape"} (+ "background" on coloured backgrounds)."""
        labels = {"color": self.colors.long(), "shape": self.shapes.long()}
        if len(self.backgrounds) and (self.backgrounds >= 0).all():
            labels["background"] = self.backgrounds.long()
        return labels

    def subset(self, index: torch.Tensor) -> "SyntheticShapes":
        return SyntheticShapes(self.images[index], self.colors[index], self.shapes[index], self.templates[index],
                               self.backgrounds[index])


def load_synthetic(n: int, resolution: int, seed: int, data_dir: str, verbose: bool = True,
                   backgrounds: bool = False) -> SyntheticShapes:
    """Render (or load from the cache under data_dir) n images at `resolution`."""

    name = "synthetic-shapes-bg" if backgrounds else "synthetic-shapes"
    path = os.path.join(data_dir, f"{name}_v{VERSION}_n{n}_r{resolution}_s{seed}.safetensors")
    if os.path.exists(path):
        t = load_file(path)
    else:
        if verbose:
            print(f"rendering {n} synthetic images at {resolution}x{resolution} -> {path}")
        images, colors, shapes, templates, bgs = generate(n, resolution, seed, backgrounds)
        t = {"images": images, "colors": colors, "shapes": shapes, "templates": templates, "backgrounds": bgs}
        os.makedirs(data_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file(t, tmp)
        os.replace(tmp, path)  # atomic: a half-written cache is never picked up
    return SyntheticShapes(t["images"], t["colors"], t["shapes"], t["templates"], t.get("backgrounds"))


def sample_prompts(n: int) -> List[str]:
    """n prompts for the sample grids that cycle both attributes: 6 show every colour and shape, 18 every pair."""
    colors = list(COLORS)
    return [caption(colors[i % len(colors)], SHAPES[(i + i // len(colors)) % len(SHAPES)]) for i in range(n)]
