"""Did the image follow the prompt? An adherence judge for the synthetic shapes.

The judge is hand-written and transparent (no learned classifier that guidance could fool):
- foreground = pixels brighter than the black background;
- colour = the palette colour nearest to the mean of the bright foreground pixels;
- shape = the shape whose template, drawn into the foreground's bounding box, best matches
  the foreground (smallest mean absolute difference).
On coloured backgrounds ("synthetic-shapes-bg") the background colour is the median of the border
pixels, and "foreground" means far from it; the binding score asks for object *and* background
colour right at once. `judge_accuracy` checks the judge on the dataset's own images, where the
truth is known.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .diffusion import randn, sample
from .fidelity import fidelity_stats, speckle
from .plotting import to_numpy_images, to_unit
from .synthetic import ATTRIBUTES, BG_DIM, COLORS, SHAPES, all_prompts, caption, draw_shape

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


def attribute_accuracy(verdicts: List[Dict], targets: List[Dict[str, str]]) -> Dict[str, float]:
    """Share of images whose verdict matches the asked attribute, per attribute, and for all at once;
    with backgrounds also "binding": object and background colour both right."""
    names = list(targets[0])
    acc = {a: float(np.mean([v[a] == t[a] for v, t in zip(verdicts, targets)])) for a in names}
    acc["all"] = float(np.mean([all(v[a] == t[a] for a in names) for v, t in zip(verdicts, targets)]))
    if "background" in names:
        acc["binding"] = float(np.mean([v["color"] == t["color"] and v["background"] == t["background"]
                                        for v, t in zip(verdicts, targets)]))
    return acc


def judge_accuracy(dataset, n: int = 2000) -> Dict[str, float]:
    """The judge's accuracy on the dataset's own (real) images: should be ~100%."""
    n = min(n, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])
    names = [a for a in ("color", "shape", "background") if a in dataset[0][1]]
    targets = [{a: dataset[i][1][a] for a in names} for i in range(n)]
    return attribute_accuracy(judge(images, "background" in names), targets)


def chance_accuracy() -> Dict[str, float]:
    return {a: 1.0 / len(v) for a, v in ATTRIBUTES.items()}


def evaluation_prompts(n_per_prompt: int, backgrounds: bool = False):
    """Every canonical prompt (each colour x shape; with backgrounds, each colour x other background colour
    x shape: every prompt's colour-swapped twin is in the set too) n_per_prompt times: (texts, targets)."""
    if backgrounds:
        prompts = [(caption(c, s, 0, b), {"color": c, "shape": s, "background": b})
                   for s in SHAPES for c in COLORS for b in COLORS if b != c]
    else:
        prompts = all_prompts()
    pairs = [p for p in prompts for _ in range(n_per_prompt)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def sweep(generate, scales: Iterable[float], n_per_prompt: int, resolution: int, device, seed: int = 0,
          batch_size: int = 256, progress: bool = True, backgrounds: bool = False,
          fidelity=None) -> Dict[str, Dict[str, float]]:
    """Judge `generate(scale, rows, x_T, generator) -> images` at each scale, for every prompt n_per_prompt times.

    rows: a slice into the evaluation prompts; x_T: the starting noise of those rows; generator: the seeded
    source of a stochastic sampler's noise at each step. The same noise is used at every scale, so scales
    differ only by guidance. Returns {"<scale>": {"color", "shape", "all",
    "speckle"}}; with a `lib_cfg.fidelity.Fidelity` also "fid", and in every entry the real images' values
    "fid_real" (the real-vs-real floor for this many images) and "speckle_real".
    """
    texts, targets = evaluation_prompts(n_per_prompt, backgrounds)
    noise = randn((len(texts), 3, resolution, resolution), torch.Generator().manual_seed(seed), device)
    real = real_fidelity(fidelity, targets) if fidelity is not None else {}
    results = {}
    for s in tqdm(list(scales), desc="guidance scales", disable=not progress):
        images = torch.cat([generate(float(s), slice(i, i + batch_size), noise[i:i + batch_size],
                                     torch.Generator().manual_seed(seed + 1 + i))
                            for i in range(0, len(texts), batch_size)])
        results[format_scale(s)] = {**attribute_accuracy(judge(images, backgrounds), targets),
                                    **fidelity_stats(images, fidelity), **real}
    return results


def real_fidelity(fidelity, targets) -> Dict[str, float]:
    """{"fid_real", "speckle_real"}: the floor and the speckle of real images drawn as the targets are."""
    real = fidelity.real_images(targets)
    return {"fid_real": fidelity.fid(real), "speckle_real": float(speckle(real).mean())}


def adherence_sweep(model, embed, scales: Iterable[float], sampler, n_per_prompt: int = 6,
                    num_inference_steps: int = 25, seed: int = 0, batch_size: int = 256,
                    progress: bool = True, backgrounds: bool = False, fidelity=None,
                    **options) -> Dict[str, Dict[str, float]]:
    """Classifier-free guidance: per-attribute accuracy, speckle (and with `fidelity`, the Fréchet distance)
    at each guidance scale (see `sweep`).

    embed: captions [N] -> embeddings [N x D] (a TextEncoder or EmbeddingCache).
    backgrounds: the coloured-background prompts and judge (a model trained on "synthetic-shapes-bg").
    options: more options for `sample` (guidance_rescale, guidance_interval; guidance: APG, CFG-Zero* or
    autoguidance in place of CFG).
    """
    device = next(model.parameters()).device
    texts, _ = evaluation_prompts(n_per_prompt, backgrounds)
    cond = embed(texts).to(device)
    return sweep(lambda s, rows, x_T, g: sample(model, cond[rows], sampler, s, num_inference_steps, x_T=x_T,
                                                generator=g, progress=False, **options),
                 scales, n_per_prompt, model.resolution, device, seed, batch_size, progress, backgrounds, fidelity)


def format_scale(s: float) -> str:
    return f"{float(s):g}"


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table: one row per guidance scale, one column per attribute (and fid, speckle), then
    chance for the attributes and, when the results have them, the real images' fid and speckle."""
    first = next(iter(results.values()))
    quality = [c for c in ("fid", "speckle") if c in first]
    cols = [c for c in first if c not in quality and c not in ("fid_real", "speckle_real")] + quality

    def cell(c, v):
        if v is None:
            return " " * (7 if c in quality else 6)
        return (f"{v:7.4f}" if c == "speckle" else f"{v:7.3f}") if c in quality else f"{100 * v:5.1f}%"

    lines = ["guidance s | " + " | ".join(f"{c:>{7 if c in quality else 6}}" for c in cols), "-" * (13 + 9 * len(cols))]
    for s, acc in results.items():
        lines.append(f"{s:>10} | " + " | ".join(cell(c, acc[c]) for c in cols))
    chance = chance_accuracy()
    chance["all"] = float(np.prod(list(chance.values())))
    lines.append(f"{'chance':>10} | " + " | ".join(cell(c, None if c in quality else chance.get(c, float("nan")))
                                                   for c in cols))
    if quality:
        real = {"fid": first.get("fid_real"), "speckle": first.get("speckle_real")}
        lines.append(f"{'real':>10} | " + " | ".join(cell(c, real[c] if c in quality else None) for c in cols))
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


def tradeoff(pipe, scales: Iterable[float], n_per_prompt: int = 4, steps: Optional[int] = None, seed: int = 0,
             backgrounds: bool = False, every: int = 1, fidelity=None, **options) -> Dict[str, Dict[str, float]]:
    """Adherence and what guidance costs, at each scale: {"<s>": {"color", "shape", "all" (+ "background",
    "binding"), "variety" (layout_variety, px), "saturation", "clipped", "speckle" (+ "fid" with a
    `lib_cfg.fidelity.Fidelity`)}}. Every `every`-th evaluation prompt (1: all of them) n_per_prompt times,
    from the same noise at every scale. pipe: a `sampling.Pipeline` (steps: default its config's);
    options: its guidance and sampler options."""
    texts, targets = evaluation_prompts(n_per_prompt, backgrounds)
    keep = [i for i in range(len(texts)) if (i // n_per_prompt) % every == 0]
    texts, targets = [texts[i] for i in keep], [targets[i] for i in keep]
    groups = [i // n_per_prompt for i in range(len(texts))]
    results = {}
    for s in scales:
        images = pipe(texts, s, steps, seed=seed, **options)
        results[format_scale(s)] = {**attribute_accuracy(judge(images, backgrounds), targets),
                                    "variety": layout_variety(images, groups, backgrounds),
                                    **saturation_stats(images), **fidelity_stats(images, fidelity)}
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
