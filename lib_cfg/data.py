"""`load_data(config)`: train and validation sets of (image [3 x H x W] in [-1, 1], {"text": caption, ...}).

Four sources, chosen by `config.dataset`:
- "synthetic-shapes": the project's own offline dataset (lib_cfg.synthetic); "animal-faces": emoji art of 20
  animal faces on coloured backgrounds (lib_cfg.animal_faces), also offline;
- a local folder in the `datasets` imagefolder layout: images plus metadata.jsonl / metadata.csv
  with a `file_name` column and a caption column;
- anything else is a Hugging Face Hub dataset id (the lesson's `reese-green/afhq64_captions_64k`),
  or a folder written by `datasets.Dataset.save_to_disk`.
The last two are decoded once into uint8 tensors, kept in data_dir/image_cache: later runs (and a machine
without the dataset, given that file) start from there.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .animal_faces import load_animal_faces
from .config import ANIMAL_FACES_DATASET, SYNTHETIC_BG_DATASET, SYNTHETIC_DATASET, TrainingConfig
from .stand_ins import ensure_stand_in
from .synthetic import load_synthetic


def to_uint8(image: Image.Image, resolution: int) -> torch.Tensor:
    """Any PIL image (grayscale, RGBA, palette, any size) -> uint8 [3 x R x R].

    Transparent pixels are composited on black; the image is centre-cropped to a square, then resized.
    """
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (0, 0, 0))
        image.paste(rgba, mask=rgba.split()[-1])
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    image = image.resize((resolution, resolution), Image.BICUBIC if side > resolution else Image.NEAREST)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """Any PIL image -> [3 x R x R] in [-1, 1] (`to_uint8`, then scaled)."""
    return to_uint8(image, resolution).float() / 127.5 - 1.0


class DecodedImages(torch.utils.data.Dataset):
    """Captioned images decoded once: images uint8 [N x 3 x R x R] (64k images at 32x32 are 200 MB), so a
    training step indexes a tensor instead of decoding files. Items are (image [3 x R x R] in [-1, 1],
    {"text": caption, and the dataset's other number or string columns, e.g. "label"})."""

    def __init__(self, images: torch.Tensor, captions: List[str], extra: Dict[str, list]):
        self.images, self.captions, self.extra = images, captions, extra

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1.0, {**{k: v[i] for k, v in self.extra.items()}, "text": self.captions[i]}

    def subset(self, index: torch.Tensor) -> "DecodedImages":
        idx = index.tolist()
        return DecodedImages(self.images[index], [self.captions[i] for i in idx],
                             {k: [v[i] for i in idx] for k, v in self.extra.items()})


def decode(ds, image_column: str, caption_column: str, resolution: int, verbose: bool = True) -> DecodedImages:
    """Decode every image of a `datasets.Dataset` once, with a progress bar."""
    extra_columns = [c for c, f in ds.features.items() if c not in (image_column, caption_column)
                     and getattr(f, "dtype", None) in ("int64", "int32", "int16", "int8", "float32", "float64", "string")]
    images = torch.empty((len(ds), 3, resolution, resolution), dtype=torch.uint8)
    with tqdm(total=len(ds), desc="decoding images (once)", disable=not verbose) as bar:
        for start in range(0, len(ds), 1024):  # a chunk at a time: 64k PIL images at once would not fit
            for i, image in enumerate(ds[start:start + 1024][image_column], start):
                if not isinstance(image, Image.Image):
                    image = Image.open(image["path"]) if isinstance(image, dict) else Image.fromarray(np.asarray(image))
                images[i] = to_uint8(image, resolution)
            bar.update(min(1024, len(ds) - start))
    return DecodedImages(images, [str(c or "") for c in ds[caption_column]], {c: list(ds[c]) for c in extra_columns})


IMAGE_CACHE_VERSION = 1  # bump when decoding changes (to_uint8), so old caches are not reused


def _folder_fingerprint(path: str) -> str:
    """What identifies a local dataset folder's contents: the `datasets` fingerprint of a save_to_disk folder
    (it survives copying), else every file's relative path, size and modification time."""
    state = os.path.join(path, "state.json")
    if os.path.exists(state):
        with open(state) as f:
            fingerprint = json.load(f).get("_fingerprint")
        if fingerprint:
            return fingerprint
    listing = []
    for folder, _, files in os.walk(path):
        for name in sorted(files):
            full = os.path.join(folder, name)
            info = os.stat(full)
            listing.append(f"{os.path.relpath(full, path)}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha1("\n".join(sorted(listing)).encode()).hexdigest()


def image_cache_path(config: TrainingConfig) -> str:
    """Where `load_data` keeps the decoded images of config.dataset (data_dir/image_cache). A local folder's
    contents are part of the name (`_folder_fingerprint`), so an edited folder is decoded again; for a hub
    id, delete the file to decode a newer version of the dataset."""
    key = f"v{IMAGE_CACHE_VERSION}|{config.dataset}|{config.image_column}|{config.caption_column}|{config.resolution}"
    if os.path.isdir(config.dataset):
        key += "|" + _folder_fingerprint(config.dataset)
    name = os.path.basename(os.path.normpath(config.dataset)) or "dataset"
    return os.path.join(config.data_dir, "image_cache",
                        f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}-r{config.resolution}.safetensors")


def save_decoded(images: DecodedImages, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({"images": images.images.contiguous()}, tmp,
              metadata={"captions": json.dumps(images.captions), "extra": json.dumps(images.extra)})
    os.replace(tmp, path)


def load_decoded(path: str) -> DecodedImages:
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        return DecodedImages(f.get_tensor("images"), json.loads(meta["captions"]), json.loads(meta["extra"]))


def _check_columns(ds, config: TrainingConfig, where: str) -> None:
    columns = list(ds.column_names)
    for kind, name in (("caption", config.caption_column), ("image", config.image_column)):
        if name not in columns:
            flag = f"--{kind}_column"
            raise ValueError(f"{where} has no {kind} column {name!r}; its columns are {columns}. "
                             f"Pick one with {flag} NAME (TrainingConfig.{kind}_column).")


def _load_hf(config: TrainingConfig):
    """A `datasets.Dataset` for config.dataset, and words saying where it came from."""
    import datasets  # here, not at the top: only hub and folder sources need it, and it takes seconds to import

    path = config.dataset
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(path)  # written by Dataset.save_to_disk
            return (ds["train"] if isinstance(ds, datasets.DatasetDict) else ds), f"the saved dataset {path}"
        if any(os.path.exists(os.path.join(path, m)) for m in ("metadata.jsonl", "metadata.csv")):
            ds = datasets.load_dataset("imagefolder", data_dir=path, split="train")
            return _drop_unreadable_images(ds, config.image_column), f"the image folder {path}"
        # A local copy of a hub dataset repository (parquet/arrow files): the same loader as the hub.
        try:
            return datasets.load_dataset(path, split="train"), f"the dataset folder {path}"
        except Exception as e:  # EmptyDatasetError, DataFilesNotFoundError, ...
            raise FileNotFoundError(
                f"{path} is neither an image folder (images + metadata.jsonl or metadata.csv with 'file_name' and a "
                f"caption column) nor a dataset folder (parquet/arrow files, or Dataset.save_to_disk): "
                f"{type(e).__name__}: {e}") from e
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"dataset folder {path!r} does not exist (and it is not a hub id 'owner/name')")
    try:
        return datasets.load_dataset(path, split="train"), f"the hub dataset {path}"
    except Exception as e:  # datasets raises several types for "not found" and "offline"
        raise RuntimeError(
            f"could not load the dataset {path!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Check the name and your network, or work offline with --dataset {SYNTHETIC_DATASET} "
            f"or a local image folder (images + metadata.jsonl).") from e


def _drop_unreadable_images(ds, image_column: str):
    """Skip corrupt or truncated image files, with a warning that names each one."""
    import datasets

    if image_column not in ds.column_names:
        return ds  # reported by _check_columns
    raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
    good, bad = [], []
    for i, item in enumerate(raw):
        try:
            with Image.open(item["path"] if item.get("path") else io.BytesIO(item["bytes"])) as im:
                im.load()  # decodes every pixel: catches truncated files that verify() lets through
            good.append(i)
        except Exception as e:  # PIL raises several types for broken files
            bad.append(f"{os.path.basename(item.get('path') or '?')} ({type(e).__name__})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s): {', '.join(bad[:10])}"
                      + (" ..." if len(bad) > 10 else ""))
    return ds.select(good) if bad else ds


def _warn_empty_captions(captions) -> None:
    empty = sum(1 for c in captions if not str(c).strip())
    if empty:
        warnings.warn(f"{empty} of {len(captions)} captions are empty: they are kept, and the model learns them as "
                      f"the caption \"\" (not as the null prompt). Fill them in, or remove those rows.")


def load_data(config: TrainingConfig, verbose: bool = True) -> Tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """(train_ds, val_ds) for `config.dataset`; the split is deterministic from config.seed."""
    if config.dataset in (SYNTHETIC_DATASET, SYNTHETIC_BG_DATASET):
        full = load_synthetic(config.synthetic_size, config.resolution, config.seed, config.data_dir, verbose,
                              backgrounds=config.dataset == SYNTHETIC_BG_DATASET)
    elif config.dataset == ANIMAL_FACES_DATASET:
        full = load_animal_faces(config.resolution, config.styles, config.data_dir, verbose)
    else:
        ensure_stand_in(config.dataset)  # the lesson-smoke preset's AFHQ-shaped dataset, built on first use
        cache = image_cache_path(config)  # for a local folder this reads its listing: once
        if os.path.exists(cache):  # decoded before (or bundled by `make gpu-prep`)
            full = load_decoded(cache)
        else:
            ds, where = _load_hf(config)
            _check_columns(ds, config, where)
            _warn_empty_captions(ds[config.caption_column])
            full = decode(ds, config.image_column, config.caption_column, config.resolution, verbose)
            save_decoded(full, cache)
    n = len(full)
    if n < 2:
        raise ValueError(f"the dataset {config.dataset!r} has {n} usable item(s); training needs at least 2")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_val = max(1, int(round(n * config.val_fraction)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return full.subset(train_idx), full.subset(val_idx)


def all_captions(dataset) -> list:
    """Every caption of a dataset, read without decoding images where possible."""
    if hasattr(dataset, "captions"):
        return list(dataset.captions)
    warnings.warn("reading captions by iterating the dataset (slow)")
    return [dataset[i][1]["text"] for i in range(len(dataset))]
