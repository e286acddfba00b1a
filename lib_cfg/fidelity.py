"""Do the samples look like the data? Two numbers beside adherence: a Fréchet distance and speckle.

The judge (`lib_cfg.evaluation`) reads colour and shape only, so it scores an image of pixel noise with
a red blob in it as a red circle. Sample quality needs numbers of its own:

- `speckle(images)`: per image, the mean absolute difference between each pixel and the median of its
  3x3 neighbourhood, on [0, 1]. Flat regions and clean edges are close to their median; isolated pixel
  noise is not. The dataset's own images score about 0.005; an image above `SPECKLED` (0.03) looks like
  noise to the eye.
- `Fidelity(config).fid(images)`: the Fréchet distance (Heusel et al. 2017) between the features of the
  generated images and those of held-out real images: |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2)).
  The features are not Inception's (no downloaded weights, and ImageNet features know nothing of 16x16
  shapes): as in the fastai course, they come from a small network trained here, on the project's own data,
  to read each image's colour, shape (and background) and its object's position and size (`FeatureNet`).
  The features are its last hidden layer, `FEATURE_DIM` numbers per image. The reference is
  `REFERENCE_SIZE` freshly rendered images that neither this network nor any diffusion model trained on.

A Fréchet distance on a finite sample is biased upwards, more so for fewer images, so it is only read
against `floor(n)`: the distance of n other real images, drawn as the prompts are, from the same
reference (on `quick`: about 0.9 for 108 images, 0.26 for 216). Between two draws of the starting noise
the distance of 108 samples moves by 1 to 3 (`benchmarks/results.json`, "samplers", `fid_per_seed`), so
108 images tell apart differences of a few units (guidance s = 1 against s = 3 on `quick`: about 6 against
18); finer comparisons need more images or more seeds.

The features read what an image shows, not its pixel noise: DDIM without noise draws 75% of its images
speckled on `quick` and still scores as DDPM 1000 does. That is what `speckle` is for; read both.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import SYNTHETIC_BG_DATASET, SYNTHETIC_DATASET, TrainingConfig
from .synthetic import COLORS, SHAPES, load_synthetic
from .plotting import to_unit

SPECKLED = 0.03  # speckle above this: an image the eye reads as pixel noise (real images: ~0.005)
FEATURE_DIM = 32  # features per image: few enough that a few hundred images estimate their covariance
REFERENCE_SIZE = 4000  # held-out real images the generated ones are compared with
VERSION = 1  # bump when FeatureNet or its training changes, so stale weights are not reused
FEATURE_SEED, REFERENCE_SEED, FLOOR_SEED = 101, 202, 303  # three draws of the data, none the diffusion model's


def speckle(images: torch.Tensor) -> torch.Tensor:
    """images [N x 3 x H x W] in [-1, 1] -> [N]: mean |x - median3x3(x)| over pixels and channels, on [0, 1]."""
    x = to_unit(images.detach().float().cpu())
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    neighbourhoods = padded.unfold(2, 3, 1).unfold(3, 3, 1).flatten(-2)  # [N x 3 x H x W x 9]
    return (x - neighbourhoods.median(dim=-1).values).abs().mean(dim=(1, 2, 3))


def speckle_stats(images: torch.Tensor) -> Dict[str, float]:
    """{"speckle": mean speckle, "speckled": share of images above SPECKLED}."""
    values = speckle(images)
    return {"speckle": float(values.mean()), "speckled": float((values > SPECKLED).float().mean())}


class FeatureNet(nn.Module):
    """A small CNN that reads a synthetic image: images [N x 3 x H x W] in [-1, 1] -> features [N x FEATURE_DIM],
    and from them logits per attribute and the object's layout (centre x, centre y, size, divided by H).
    The convolutions halve the image down to 4x4 and keep that grid (no global pooling), so the features
    know where the object is as well as what it is."""

    def __init__(self, resolution: int, attributes: Dict[str, int], channels: int = 32):
        super().__init__()
        layers, c = [nn.Conv2d(3, channels, 3, padding=1), nn.SiLU()], channels
        size = resolution
        while size > 4:
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU()]
            c, size = 2 * c, size // 2
        self.conv = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, FEATURE_DIM), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, n) for k, n in attributes.items()})
        self.layout_head = nn.Linear(FEATURE_DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv(x))

    def predict(self, x: torch.Tensor):
        f = self(x)
        return {k: head(f) for k, head in self.heads.items()}, self.layout_head(f)


def _attributes(backgrounds: bool) -> Dict[str, int]:
    return {"color": len(COLORS), "shape": len(SHAPES), **({"background": len(COLORS)} if backgrounds else {})}


def _labels(ds) -> Dict[str, torch.Tensor]:
    labels = {"color": ds.colors.long(), "shape": ds.shapes.long()}
    if (ds.backgrounds >= 0).all():
        labels["background"] = ds.backgrounds.long()
    return labels


def train_feature_net(ds, resolution: int, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                      progress: bool = True) -> FeatureNet:
    """Cross-entropy on each attribute plus the squared error of the layout, on clean images of `ds`."""
    from .evaluation import layout  # the judge's own notion of where the object is

    backgrounds = bool((ds.backgrounds >= 0).all())
    with torch.random.fork_rng():  # the same weights for a seed, without touching the caller's random state
        torch.manual_seed(seed)
        net = FeatureNet(resolution, _attributes(backgrounds))
    images = ds.images.float() / 127.5 - 1
    labels = _labels(ds)
    where = torch.cat([layout(images[i:i + 4096], backgrounds) for i in range(0, len(images), 4096)]) / resolution
    where = where.nan_to_num(0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="training the fidelity features", disable=not progress, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:  # cosine decay: a settled network, whatever the seed
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        logits, pred_where = net.predict(images[idx])
        loss = sum(F.cross_entropy(logits[k], v[idx]) for k, v in labels.items())
        loss = loss + 10 * F.mse_loss(pred_where, where[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N x D] and b [M x D]."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the second is symmetric, so eigvalsh applies.
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


class Fidelity:
    """The Fréchet distance of generated images from held-out real ones, for a config's synthetic dataset.

    The feature network is trained on first use (about 20 s on 2 CPU cores) and kept in
    data_dir/fidelity/; the real images are rendered once and kept beside the dataset."""

    def __init__(self, config: TrainingConfig, progress: bool = True):
        if config.dataset not in (SYNTHETIC_DATASET, SYNTHETIC_BG_DATASET):
            raise ValueError(f"the fidelity features are trained on the synthetic shapes; {config.dataset!r} has no "
                             "known attributes to train them on. Look at the samples instead (`sample`).")
        self.backgrounds = config.dataset == SYNTHETIC_BG_DATASET
        self.resolution, self.data_dir, self.progress = config.resolution, config.data_dir, progress
        self.net = self._load_or_train()
        self.reference = load_synthetic(REFERENCE_SIZE, self.resolution, REFERENCE_SEED, self.data_dir,
                                        verbose=False, backgrounds=self.backgrounds)
        self.reference_features = self.features(self.reference.images.float() / 127.5 - 1)
        self._floor_pool = None

    def _load_or_train(self) -> FeatureNet:
        name = f"{'shapes-bg' if self.backgrounds else 'shapes'}_r{self.resolution}_v{VERSION}.safetensors"
        path = os.path.join(self.data_dir, "fidelity", name)
        net = FeatureNet(self.resolution, _attributes(self.backgrounds))
        if os.path.exists(path):
            net.load_state_dict(load_file(path))
            return net.eval().requires_grad_(False)
        ds = load_synthetic(20000, self.resolution, FEATURE_SEED, self.data_dir, verbose=False,
                            backgrounds=self.backgrounds)
        net = train_feature_net(ds, self.resolution, progress=self.progress)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, path)  # atomic: a half-written file is never loaded
        return net

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [N x 3 x H x W] in [-1, 1] -> [N x FEATURE_DIM]."""
        x = images.detach().float().cpu()
        return torch.cat([self.net(x[i:i + 1024]) for i in range(0, len(x), 1024)])

    def fid(self, images: torch.Tensor) -> float:
        """The Fréchet distance of images [N x 3 x H x W] from the reference; compare with floor(N)."""
        if len(images) < 2:
            raise ValueError("a Fréchet distance needs at least 2 images")
        return frechet_distance(self.features(images), self.reference_features)

    def real_images(self, targets: Sequence[Dict[str, str]], seed: int = 0) -> torch.Tensor:
        """Real images [N x 3 x H x W] in [-1, 1], none of them in the reference, one per target
        ({"color", "shape"} (+ "background")), so they follow the prompts' mix of attributes."""
        if self._floor_pool is None:
            self._floor_pool = load_synthetic(REFERENCE_SIZE, self.resolution, FLOOR_SEED, self.data_dir,
                                              verbose=False, backgrounds=self.backgrounds)
        pool = self._floor_pool
        names = list(COLORS)
        key = [(names[c], SHAPES[s], names[b] if b >= 0 else None) for c, s, b in
               zip(pool.colors.tolist(), pool.shapes.tolist(), pool.backgrounds.tolist())]
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        picked: List[int] = []
        used = set()
        for target in targets:
            want = (target["color"], target["shape"], target.get("background"))
            i = next((i for i in order if i not in used and key[i] == want), None)
            if i is None:
                raise ValueError(f"the real-image pool has too few images of {want}; ask for fewer")
            used.add(i)
            picked.append(i)
        return pool.images[picked].float() / 127.5 - 1

    def floor(self, targets: Sequence[Dict[str, str]], seed: int = 0) -> float:
        """The real-vs-real floor: the Fréchet distance of len(targets) real images, drawn as the targets
        are, from the reference. A generated set of that size cannot be expected to score below it."""
        return self.fid(self.real_images(targets, seed))


def fidelity_stats(images: torch.Tensor, fidelity: Optional[Fidelity]) -> Dict[str, float]:
    """{"fid", "speckle"} for images [N x 3 x H x W]; without a Fidelity, speckle only."""
    out = {"speckle": float(speckle(images).mean())}
    if fidelity is not None:
        out = {"fid": fidelity.fid(images), **out}
    return out
