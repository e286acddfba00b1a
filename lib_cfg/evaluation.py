"""Did the image follow the prompt? Adherence sweeps over the guidance scale, for any labelled dataset.

A labelled dataset (`lib_cfg.labelled`) declares what its captions name; the judge follows from that: the
shapes' hand-written one (`lib_cfg.judge`: transparent, nothing for guidance to fool), or for the animal
faces the attribute heads of the fidelity network, a classifier trained on renders no diffusion model
trains on. `judge_accuracy` checks a judge on real images, where the truth is known. Beside adherence:
held-out pairs (`heldout_all`), copies of training images (`copy_rate`), and `lib_cfg.fidelity`'s
Fréchet distance and speckle.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import SYNTHETIC_BG_DATASET, SYNTHETIC_DATASET, get_preset
from .diffusion import randn, sample
from .fidelity import fidelity_stats, speckle
from .judge import LIT, judge, judge_image, layout, layout_variety  # noqa: F401 (the shapes' judge, where the notebooks find it)
from .labelled import LabelledData, labelled_data
from .plotting import to_unit


def shapes_data(backgrounds: bool = False) -> LabelledData:
    """The shapes' labels (on black, or with backgrounds on coloured backgrounds): the default of the sweeps."""
    return labelled_data(get_preset("quick", dataset=SYNTHETIC_BG_DATASET if backgrounds else SYNTHETIC_DATASET))


def data_of(fidelity=None, backgrounds: bool = False) -> LabelledData:
    """The labelled data a sweep is about when not given: the fidelity network's, else the shapes' (with
    backgrounds: on coloured backgrounds)."""
    return fidelity.data if fidelity is not None and not backgrounds else shapes_data(backgrounds)


def judge_for(data: LabelledData, fidelity=None):
    """images [N x 3 x H x W] -> verdicts: the dataset's hand-written judge, else `fidelity`'s heads."""
    if data.judge is not None:
        return data.judge
    if fidelity is None:
        raise ValueError(f"{data.name} has no hand-written judge: its judge is the fidelity network's heads, so "
                         "pass fidelity=Fidelity(config)")
    return fidelity.judge


def attribute_accuracy(verdicts: List[Dict], targets: List[Dict[str, str]]) -> Dict[str, float]:
    """Share of images whose verdict matches the asked attribute, per attribute, and for all at once;
    with backgrounds also "binding": object and background colour both right."""
    names = list(targets[0])
    acc = {a: float(np.mean([v[a] == t[a] for v, t in zip(verdicts, targets)])) for a in names}
    acc["all"] = float(np.mean([all(v[a] == t[a] for a in names) for v, t in zip(verdicts, targets)]))
    if {"color", "background"} <= set(names):
        acc["binding"] = float(np.mean([v["color"] == t["color"] and v["background"] == t["background"]
                                        for v, t in zip(verdicts, targets)]))
    return acc


def judge_accuracy(dataset, n: int = 2000, data: Optional[LabelledData] = None, fidelity=None) -> Dict[str, float]:
    """The judge's accuracy on real images of `dataset` (items (image, {attribute: name})), where the truth is
    known: should be ~100%. data: the labels (default: the shapes', with backgrounds if the items name one)."""
    n = min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    if data is None and "color" not in items[0][1]:
        raise ValueError("judge_accuracy needs data=labelled_data(config) for a dataset other than the shapes")
    data = data or shapes_data("background" in items[0][1])
    targets = [{a: meta[a] for a in data.labels} for _, meta in items]
    return attribute_accuracy(judge_for(data, fidelity)(torch.stack([x for x, _ in items])), targets)


def chance_accuracy(data: Optional[LabelledData] = None) -> Dict[str, float]:
    """The accuracy of a guess for each attribute of `data` (default: the shapes)."""
    return {a: 1.0 / len(v) for a, v in (data or shapes_data()).labels.items()}


def evaluation_prompts(n_per_prompt: int, backgrounds: bool = False, data: Optional[LabelledData] = None):
    """Every canonical prompt of `data` n_per_prompt times: (texts, targets). Default: the shapes' (each colour x
    shape; with backgrounds, each colour x other background colour x shape: every prompt's colour-swapped twin
    is in the set too)."""
    prompts = (data or shapes_data(backgrounds)).prompts()
    pairs = [p for p in prompts for _ in range(n_per_prompt)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def copy_rate(images: torch.Tensor, training_images: torch.Tensor, ratio: float = 1 / 3,
              mirrored: bool = True) -> float:
    """The share of images [N x 3 x H x W] in [-1, 1] that are a near-copy of one training image (uint8
    [M x 3 x H x W]): the nearest training image (RMS pixel distance) is closer than `ratio` times the second
    nearest (Gu et al. 2025, "On memorization in diffusion models"). A new drawing sits about as far from
    its two nearest training images; a copy sits on one of them. mirrored: a training image and its mirror
    count as one (give each once): a face and its mirror are nearly the same picture, and otherwise a copy
    of one would always have the other as a close second."""
    x = images.detach().float().cpu().flatten(1)
    train = training_images.float() / 127.5 - 1
    distance = torch.cdist(x, train.flatten(1))
    if mirrored:
        distance = torch.minimum(distance, torch.cdist(x, train.flip(-1).flatten(1)))
    nearest = distance.topk(2, dim=1, largest=False).values  # [N x 2], ascending
    return float((nearest[:, 0] < ratio * nearest[:, 1]).float().mean())


def score(images: torch.Tensor, targets: List[Dict[str, str]], data: LabelledData, fidelity=None,
          groups: Optional[List[int]] = None) -> Dict[str, float]:
    """Everything judged of images [N x 3 x H x W] drawn for `targets`: each attribute and "all" (+ "binding"),
    "heldout_all" where data holds pairs out of training, "copy_rate" where its training images are few, with
    groups (the prompt of each image) data's "variety", then "speckle", and with a `Fidelity` "fid"."""
    verdicts = judge_for(data, fidelity)(images)
    out = attribute_accuracy(verdicts, targets)
    heldout = [i for i, t in enumerate(targets) if data.is_heldout(t)]
    if heldout:
        out["heldout_all"] = attribute_accuracy([verdicts[i] for i in heldout], [targets[i] for i in heldout])["all"]
    if data.training_images is not None:
        out["copy_rate"] = copy_rate(images, data.training_images())
    if groups is not None:
        out["variety"] = data.variety(images, groups, verdicts)
    return {**out, **fidelity_stats(images, fidelity)}


def sweep(generate, scales: Iterable[float], n_per_prompt: int, resolution: int, device, seed: int = 0,
          batch_size: int = 256, progress: bool = True, backgrounds: bool = False,
          fidelity=None, data: Optional[LabelledData] = None) -> Dict[str, Dict[str, float]]:
    """Judge `generate(scale, rows, x_T, generator) -> images` at each scale, for every prompt n_per_prompt times.

    rows: a slice into the evaluation prompts; x_T: the starting noise of those rows; generator: the seeded
    source of a stochastic sampler's noise at each step. The same noise is used at every scale, so scales
    differ only by guidance. data: the labels and prompts (default: the fidelity's data, else the shapes',
    with backgrounds on coloured backgrounds). Returns {"<scale>": `score`'s numbers}; with a
    `lib_cfg.fidelity.Fidelity` in every entry also the real images' values "fid_real" (the real-vs-real floor
    for this many images) and "speckle_real".
    """
    data = data or data_of(fidelity, backgrounds)
    texts, targets = evaluation_prompts(n_per_prompt, data=data)
    noise = randn((len(texts), 3, resolution, resolution), torch.Generator().manual_seed(seed), device)
    real = real_fidelity(fidelity, targets) if fidelity is not None else {}
    results = {}
    for s in tqdm(list(scales), desc="guidance scales", disable=not progress):
        images = torch.cat([generate(float(s), slice(i, i + batch_size), noise[i:i + batch_size],
                                     torch.Generator().manual_seed(seed + 1 + i))
                            for i in range(0, len(texts), batch_size)])
        results[format_scale(s)] = {**score(images, targets, data, fidelity), **real}
    return results


def real_fidelity(fidelity, targets) -> Dict[str, float]:
    """{"fid_real", "speckle_real"}: the floor and the speckle of real images drawn as the targets are."""
    real = fidelity.real_images(targets)
    return {"fid_real": fidelity.fid(real), "speckle_real": float(speckle(real).mean())}


def adherence_sweep(model, embed, scales: Iterable[float], sampler, n_per_prompt: int = 6,
                    num_inference_steps: int = 25, seed: int = 0, batch_size: int = 256,
                    progress: bool = True, backgrounds: bool = False, fidelity=None,
                    data: Optional[LabelledData] = None, **options) -> Dict[str, Dict[str, float]]:
    """Classifier-free guidance: per-attribute accuracy, speckle (and with `fidelity`, the Fréchet distance)
    at each guidance scale (see `sweep`).

    embed: captions [N] -> embeddings [N x D] (a TextEncoder or EmbeddingCache).
    backgrounds: the coloured-background shapes' prompts and judge (a model trained on "synthetic-shapes-bg").
    data: another labelled dataset's (default: the fidelity's, else the shapes').
    options: more options for `sample` (guidance_rescale, guidance_interval; guidance: APG, CFG-Zero* or
    autoguidance in place of CFG).
    """
    device = next(model.parameters()).device
    data = data or data_of(fidelity, backgrounds)
    texts, _ = evaluation_prompts(n_per_prompt, data=data)
    cond = embed(texts).to(device)
    return sweep(lambda s, rows, x_T, g: sample(model, cond[rows], sampler, s, num_inference_steps, x_T=x_T,
                                                generator=g, progress=False, **options),
                 scales, n_per_prompt, model.resolution, device, seed, batch_size, progress, backgrounds, fidelity,
                 data)


def format_scale(s: float) -> str:
    return f"{float(s):g}"


def format_table(results: Dict[str, Dict[str, float]], data: Optional[LabelledData] = None) -> str:
    """A plain-text table: one row per guidance scale, one column per attribute (and fid, speckle), then
    chance for the attributes of `data` (default: the shapes) and, when the results have them, the real
    images' fid and speckle."""
    first = next(iter(results.values()))
    quality = [c for c in ("fid", "speckle") if c in first]
    cols = [c for c in first if c not in quality and c not in ("fid_real", "speckle_real")] + quality
    width = {c: max(len(c), 7 if c in quality else 6) for c in cols}

    def cell(c, v):
        if v is None:
            return " " * width[c]
        text = (f"{v:.4f}" if c == "speckle" else f"{v:.3f}") if c in quality else f"{100 * v:5.1f}%"
        return f"{text:>{width[c]}}"

    lines = ["guidance s | " + " | ".join(f"{c:>{width[c]}}" for c in cols),
             "-" * (10 + sum(3 + w for w in width.values()))]
    for s, acc in results.items():
        lines.append(f"{s:>10} | " + " | ".join(cell(c, acc[c]) for c in cols))
    chance = chance_accuracy(data)
    chance["all"] = chance["heldout_all"] = float(np.prod(list(chance.values())))
    lines.append(f"{'chance':>10} | " + " | ".join(cell(c, chance.get(c)) for c in cols))
    if quality:
        real = {"fid": first.get("fid_real"), "speckle": first.get("speckle_real")}
        lines.append(f"{'real':>10} | " + " | ".join(cell(c, real.get(c)) for c in cols))
    return "\n".join(lines)


def diversity(images: torch.Tensor, groups: List[int]) -> float:
    """Mean pairwise RMS distance between images that share a group (a prompt), averaged over groups.

    images: [N x 3 x H x W] in [-1, 1]; groups: [N] group ids. 0 means every prompt gave one image.
    """
    flat = images.detach().float().cpu().flatten(1)
    g = torch.tensor(groups)
    values = []
    for k in g.unique():
        x = flat[g == k]
        if len(x) < 2:
            continue
        d = torch.cdist(x, x) / flat.shape[1] ** 0.5
        values.append(d.sum() / (len(x) * (len(x) - 1)))
    return float(torch.stack(values).mean()) if values else 0.0


def tradeoff(pipe, scales: Iterable[float], n_per_prompt: int = 4, steps: Optional[int] = None, seed: int = 0,
             backgrounds: bool = False, every: int = 1, fidelity=None, data: Optional[LabelledData] = None,
             **options) -> Dict[str, Dict[str, float]]:
    """Adherence and what guidance costs, at each scale: {"<s>": {"color", "shape", "all" (+ "background",
    "binding"), "variety", "saturation", "clipped", "speckle" (+ "fid", "fid_real" and "speckle_real" with a
    `lib_cfg.fidelity.Fidelity`, as in `sweep`)}}; on another labelled dataset (`data`, default: the
    fidelity's) its attributes and `score`'s other numbers. variety: the dataset's own measure of variety within a prompt (shapes: `layout_variety`, px; animal faces:
    the share of prompts drawn in both styles). Every `every`-th evaluation prompt (1: all of them)
    n_per_prompt times, from the same noise at every scale. pipe: a `sampling.Pipeline` (steps: default its
    config's); options: its guidance and sampler options."""
    data = data or data_of(fidelity, backgrounds)
    texts, targets = evaluation_prompts(n_per_prompt, data=data)
    keep = [i for i in range(len(texts)) if (i // n_per_prompt) % every == 0]
    texts, targets = [texts[i] for i in keep], [targets[i] for i in keep]
    groups = [i // n_per_prompt for i in range(len(texts))]
    real = real_fidelity(fidelity, targets) if fidelity is not None else {}
    results = {}
    for s in scales:
        images = pipe(texts, s, steps, seed=seed, **options)
        scores = score(images, targets, data, fidelity, groups)
        quality = {k: scores.pop(k) for k in ("fid", "speckle") if k in scores}
        results[format_scale(s)] = {**scores, **saturation_stats(images), **quality, **real}
    return results


def saturation_stats(images: torch.Tensor) -> Dict[str, float]:
    """How saturated / over-exposed images [N x 3 x H x W] in [-1, 1] are (large guidance pushes both up),
    over the lit pixels (max channel > LIT; the black background does not count):
    "clipped": share of their channel values pinned at an end of the range (< 1% or > 99%);
    "saturation": their mean HSV saturation, (max - min) / max."""
    x = to_unit(images)
    hi, lo = x.max(dim=1).values, x.min(dim=1).values  # [N x H x W]
    lit = hi > LIT
    if not lit.any():
        return {"clipped": 0.0, "saturation": 0.0}
    channels = x.permute(0, 2, 3, 1)[lit]  # [lit pixels x 3]
    return {"clipped": float(((channels <= 0.01) | (channels >= 0.99)).float().mean()),
            "saturation": float(((hi - lo) / hi.clamp(min=1e-6))[lit].mean())}
