"""Did the image follow the prompt? An adherence judge for the synthetic shapes.

The judge is hand-written and transparent (no learned classifier that guidance could fool):
- foreground = pixels brighter than the black background;
- colour = the palette colour nearest to the mean of the bright foreground pixels;
- shape = the shape whose template, drawn into the foreground's bounding box, best matches
  the foreground (smallest mean absolute difference).
`judge_accuracy` checks the judge on the dataset's own images, where the truth is known.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from .synthetic import ATTRIBUTES, COLORS, SHAPES, all_prompts, draw_shape

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32) / 255.0


def _template(shape: str, box, resolution: int, ss: int = 4) -> np.ndarray:
    img = Image.new("L", (resolution * ss, resolution * ss), 0)
    draw_shape(ImageDraw.Draw(img), shape, tuple(v * ss for v in box), 255)
    return np.asarray(img.resize((resolution, resolution), Image.BOX), dtype=np.float32) / 255.0


def judge_image(image: np.ndarray) -> Dict[str, Optional[str]]:
    """image: [H x W x 3] float in [0, 1] -> {"color": name or None, "shape": name or None}."""
    brightness = image.max(axis=-1)
    fg = brightness > 0.3
    if fg.sum() < 3:
        return {"color": None, "shape": None}  # nothing drawn: every attribute is missing
    core = brightness > 0.6 * brightness[fg].max()
    mean = image[core].mean(axis=0)
    color = list(COLORS)[int(((_PALETTE - mean) ** 2).sum(axis=1).argmin())]
    ys, xs = np.nonzero(brightness > 0.5 * brightness[fg].max())
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    soft = np.clip(brightness / max(float(brightness[core].mean()), 1e-3), 0, 1)
    errors = [np.abs(soft - _template(s, box, image.shape[0])).mean() for s in SHAPES]
    return {"color": color, "shape": SHAPES[int(np.argmin(errors))]}


def judge(images: torch.Tensor) -> List[Dict[str, Optional[str]]]:
    """images: [N x 3 x H x W] in [-1, 1] -> one {"color", "shape"} verdict per image."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return [judge_image(a) for a in arr]


def attribute_accuracy(verdicts: List[Dict], targets: List[Dict[str, str]]) -> Dict[str, float]:
    """Share of images whose verdict matches the asked attribute, per attribute, and for all at once."""
    acc = {a: float(np.mean([v[a] == t[a] for v, t in zip(verdicts, targets)])) for a in ATTRIBUTES}
    acc["all"] = float(np.mean([all(v[a] == t[a] for a in ATTRIBUTES) for v, t in zip(verdicts, targets)]))
    return acc


def judge_accuracy(dataset, n: int = 2000) -> Dict[str, float]:
    """The judge's accuracy on the dataset's own (real) images: should be ~100%."""
    n = min(n, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])
    targets = [{a: dataset[i][1][a] for a in ATTRIBUTES} for i in range(n)]
    return attribute_accuracy(judge(images), targets)


def chance_accuracy() -> Dict[str, float]:
    return {a: 1.0 / len(v) for a, v in ATTRIBUTES.items()}


def evaluation_prompts(n_per_prompt: int):
    """Every canonical prompt (each colour x shape) n_per_prompt times: (texts, targets)."""
    pairs = [p for p in all_prompts() for _ in range(n_per_prompt)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def sweep(generate, scales: Iterable[float], n_per_prompt: int, resolution: int, device, seed: int = 0,
          batch_size: int = 256, progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Judge `generate(scale, rows, x_T) -> images` at each scale, for every prompt n_per_prompt times.

    rows: a slice into the evaluation prompts; x_T: the starting noise of those rows. The same noise
    is used at every scale, so scales differ only by guidance. Returns {"<scale>": {"color", "shape", "all"}}.
    """
    from tqdm.auto import tqdm

    from .diffusion import randn

    texts, targets = evaluation_prompts(n_per_prompt)
    noise = randn((len(texts), 3, resolution, resolution), torch.Generator().manual_seed(seed), device)
    results = {}
    for s in tqdm(list(scales), desc="guidance scales", disable=not progress):
        images = torch.cat([generate(float(s), slice(i, i + batch_size), noise[i:i + batch_size])
                            for i in range(0, len(texts), batch_size)])
        results[format_scale(s)] = attribute_accuracy(judge(images), targets)
    return results


def adherence_sweep(model, embed, scales: Iterable[float], sampler, n_per_prompt: int = 6,
                    num_inference_steps: int = 50, seed: int = 0, batch_size: int = 256,
                    progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Classifier-free guidance: per-attribute accuracy at each guidance scale (see `sweep`).

    embed: captions [N] -> embeddings [N x D] (a TextEncoder or EmbeddingCache).
    """
    from .diffusion import sample

    device = next(model.parameters()).device
    texts, _ = evaluation_prompts(n_per_prompt)
    cond = embed(texts).to(device)
    return sweep(lambda s, rows, x_T: sample(model, cond[rows], sampler, s, num_inference_steps, x_T=x_T,
                                             progress=False),
                 scales, n_per_prompt, model.resolution, device, seed, batch_size, progress)


def format_scale(s: float) -> str:
    return f"{float(s):g}"


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table: one row per guidance scale, one column per attribute, chance at the bottom."""
    cols = list(next(iter(results.values())))
    lines = ["guidance s | " + " | ".join(f"{c:>6}" for c in cols), "-" * (13 + 9 * len(cols))]
    for s, acc in results.items():
        lines.append(f"{s:>10} | " + " | ".join(f"{100 * acc[c]:5.1f}%" for c in cols))
    chance = chance_accuracy()
    chance["all"] = float(np.prod(list(chance.values())))
    lines.append(f"{'chance':>10} | " + " | ".join(f"{100 * chance.get(c, float('nan')):5.1f}%" for c in cols))
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
