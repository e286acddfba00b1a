"""Offline stand-ins for the lesson's hub assets, built on this machine: the `lesson-smoke` preset runs the
lesson's code path (a CLIP text model, an AFHQ-shaped dataset, 32x32) without a download.

- `build_clip_text_model(path)`: a `CLIPTextModel` + `CLIPTokenizer` with random weights, saved with
  `save_pretrained`. Same architecture, pooling (`pooler_output` at the end token) and 77-token limit as
  `openai/clip-vit-large-patch14`; the vocabulary is single bytes, so every character is a token.
- `build_afhq_like_dataset(path)`: a `datasets.Dataset` saved with `save_to_disk`, with the columns of
  `reese-green/afhq64_captions_64k`: `image` (64x64 RGB), `caption_blip2-opt-2.7b` and `label` (cat, dog, wild).
  The images are drawn animal faces whose ears follow the label and whose fur follows the caption.

`ensure_stand_in(path)` builds the asset a preset names (STAND_INS) the first time it is asked for.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict

import numpy as np
from PIL import Image, ImageDraw

CLIP_TEXT = "data/lesson-smoke/clip-text"  # the lesson-smoke preset's text encoder
CLIP_TEXT_768 = "data/lesson-smoke/clip-text-768"  # CLIP ViT-L/14's width (768), one layer: tools/gpu_bench.sh
AFHQ_LIKE = "data/lesson-smoke/afhq64-captions"  # the lesson-smoke preset's dataset
CAPTION_COLUMN = "caption_blip2-opt-2.7b"  # the lesson dataset's caption column
LABELS = ["cat", "dog", "wild"]  # AFHQ's classes, in its label order
FUR = {"orange": (220, 130, 40), "black": (35, 35, 35), "white": (235, 235, 230), "grey": (130, 130, 135),
       "brown": (120, 75, 40)}
CAPTION_TEMPLATES = ["a close up of a {fur} {animal}", "a {fur} {animal} looking at the camera",
                     "a {animal} with {fur} fur", "a {fur} {animal} with {eyes} eyes"]


def _byte_symbols():
    """CLIP's (GPT-2's) byte -> printable character table, so any text tokenizes without unknown tokens."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_clip_text_model(path: str, hidden_size: int = 64, layers: int = 2, heads: int = 2, seed: int = 0) -> str:
    """Save a random CLIP text model and its tokenizer to `path` (a few MB at the default size)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # here: seconds to import, rarely needed

    os.makedirs(path, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")  # no merges: each character is a token
    tokenizer = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                              model_max_length=77, pad_token=eos)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            projection_dim=hidden_size, bos_token_id=vocab[bos], eos_token_id=vocab[eos],
                            pad_token_id=vocab[eos])
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _face(label: str, fur: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """An animal face: ears by label (cat: pointed, dog: drooping, wild: round), fur colour, two eyes."""
    background = tuple(int(v) for v in rng.integers(40, 200, size=3))
    img = Image.new("RGB", (size * 4, size * 4), background)
    d, s = ImageDraw.Draw(img), size * 4
    cx, cy, r = s * rng.uniform(0.45, 0.55), s * rng.uniform(0.5, 0.6), s * rng.uniform(0.25, 0.32)
    color = FUR[fur]
    if label == "cat":
        for side in (-1, 1):
            d.polygon([(cx + side * r * 0.9, cy - r * 0.3), (cx + side * r * 0.75, cy - r * 1.45),
                       (cx + side * r * 0.2, cy - r * 0.85)], fill=color)
    elif label == "dog":
        for side in (-1, 1):
            d.ellipse((cx + side * r * 0.95 - r * 0.3, cy - r * 0.7, cx + side * r * 0.95 + r * 0.3, cy + r * 0.5),
                      fill=tuple(int(v * 0.7) for v in color))
    else:
        for side in (-1, 1):
            d.ellipse((cx + side * r * 0.7 - r * 0.3, cy - r * 1.2, cx + side * r * 0.7 + r * 0.3, cy - r * 0.6),
                      fill=color)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    eye = (40, 160, 60) if label != "dog" else (70, 40, 20)
    for side in (-1, 1):
        d.ellipse((cx + side * r * 0.4 - r * 0.12, cy - r * 0.25, cx + side * r * 0.4 + r * 0.12, cy - r * 0.01), fill=eye)
    return img.resize((size, size), Image.BOX)


def build_afhq_like_dataset(path: str, n: int = 480, seed: int = 0) -> str:
    """Save `n` captioned 64x64 animal faces with the lesson dataset's columns to `path` (Dataset.save_to_disk)."""
    import datasets  # here: seconds to import, rarely needed

    rng = np.random.default_rng(seed)
    rows = {"image": [], CAPTION_COLUMN: [], "label": []}
    for _ in range(n):
        label = int(rng.integers(len(LABELS)))
        fur = list(FUR)[int(rng.integers(len(FUR)))]
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        rows["image"].append(_face(LABELS[label], fur, rng))
        rows[CAPTION_COLUMN].append(template.format(fur=fur, animal=LABELS[label] if label < 2 else "wild animal",
                                                    eyes="green" if label != 1 else "brown"))
        rows["label"].append(label)
    features = datasets.Features({"image": datasets.Image(), CAPTION_COLUMN: datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=LABELS)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(path)
    return path


STAND_INS: Dict[str, Callable[[str], str]] = {
    CLIP_TEXT: build_clip_text_model,
    CLIP_TEXT_768: lambda path: build_clip_text_model(path, hidden_size=768, layers=1, heads=12),
    AFHQ_LIKE: build_afhq_like_dataset,
}


def ensure_stand_in(path: str, verbose: bool = True) -> None:
    """Build the stand-in asset at `path` if a preset names it (STAND_INS) and it is not there yet."""
    key = os.path.normpath(path)
    builders = {os.path.normpath(k): v for k, v in STAND_INS.items()}
    if key in builders and not os.path.exists(path):
        if verbose:
            print(f"building the offline stand-in {path} (first use)")
        builders[key](path)
