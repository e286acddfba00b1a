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
  shapes): as in the fastai course, they come from a small network trained here on fresh renders of a
  labelled dataset (`lib_cfg.labelled`), to read each label: the shapes' colour, shape (and background) and
  their object's position and size; the animal faces' animal, background and art style (`FeatureNet`).
  The features are its last hidden layer, `FEATURE_DIM` numbers per image. The reference is
  `REFERENCE_SIZE` freshly rendered images that neither this network nor any diffusion model trained on.
  Where a dataset has no hand-written judge (the animal faces), the network's heads are its judge.

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import TrainingConfig
from .labelled import LabelledData, labelled_data
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

    def __init__(self, resolution: int, attributes: Dict[str, int], channels: int = 32, layout: bool = True):
        super().__init__()
        layers, c = [nn.Conv2d(3, channels, 3, padding=1), nn.SiLU()], channels
        size = resolution
        while size > 4:
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.SiLU()]
            c, size = 2 * c, size // 2
        self.conv = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, FEATURE_DIM), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, n) for k, n in attributes.items()})
        self.layout_head = nn.Linear(FEATURE_DIM, 3) if layout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.conv(x))

    def predict(self, x: torch.Tensor):
        f = self(x)
        return {k: head(f) for k, head in self.heads.items()}, None if self.layout_head is None else self.layout_head(f)


def _attributes(data: LabelledData) -> Dict[str, int]:
    """The feature net's heads: every attribute the captions name, then those they do not (the art style)."""
    return {k: len(v) for k, v in data.all_labels.items()}


def train_feature_net(ds, data: LabelledData, resolution: int, steps: int = 1500, batch_size: int = 128,
                      seed: int = 0, progress: bool = True) -> FeatureNet:
    """Cross-entropy on each attribute (`ds.labels`: class indices [N]) plus, where `data` declares a layout,
    its squared error, on clean images ds.images (uint8 [N x 3 x H x W]) that no diffusion model trains on."""
    with torch.random.fork_rng():  # the same weights for a seed, without touching the caller's random state
        torch.manual_seed(seed)
        net = FeatureNet(resolution, _attributes(data), layout=data.layout is not None)
    images = ds.images.float() / 127.5 - 1
    labels = {k: ds.labels[k].long() for k in _attributes(data)}
    if data.layout is not None:
        where = torch.cat([data.layout(images[i:i + 4096]) for i in range(0, len(images), 4096)]) / resolution
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
        if pred_where is not None:
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
    """The Fréchet distance of generated images from held-out real ones, for a config's labelled dataset
    (`lib_cfg.labelled`); where the dataset has no hand-written judge, `judge` reads the same network's heads.

    The feature network is trained on first use (about 20 s on 2 CPU cores) and kept in
    data_dir/fidelity/; the real images are rendered once and kept beside the dataset."""

    def __init__(self, config: TrainingConfig, progress: bool = True):
        self.data = labelled_data(config)
        if self.data is None:
            raise ValueError(f"the fidelity features are trained on a labelled dataset (the synthetic shapes, "
                             f"animal-faces); {config.dataset!r} has no known labels to train them on. Look at the "
                             "samples instead (`sample`).")
        self.resolution, self.data_dir, self.progress = config.resolution, config.data_dir, progress
        self.net = self._load_or_train()
        self.reference = self.data.render(REFERENCE_SIZE, REFERENCE_SEED)
        self.reference_features = self.features(self.reference.images.float() / 127.5 - 1)
        self._floor_pool = None

    def _load_or_train(self) -> FeatureNet:
        path = os.path.join(self.data_dir, "fidelity", f"{self.data.name}_r{self.resolution}_v{VERSION}.safetensors")
        net = FeatureNet(self.resolution, _attributes(self.data), layout=self.data.layout is not None)
        if os.path.exists(path):
            net.load_state_dict(load_file(path))
            return net.eval().requires_grad_(False)
        net = train_feature_net(self.data.render(20000, FEATURE_SEED), self.data, self.resolution,
                                progress=self.progress)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, path)  # atomic: a half-written file is never loaded
        return net

    @torch.no_grad()
    def judge(self, images: torch.Tensor) -> List[Dict[str, str]]:
        """images [N x 3 x H x W] in [-1, 1] -> one {attribute: class name} per image, read by the heads: the judge
        of a dataset without a hand-written one (`lib_cfg.evaluation.judge_for`)."""
        x = images.detach().float().cpu()
        names = self.data.all_labels
        logits = [self.net.predict(x[i:i + 1024])[0] for i in range(0, len(x), 1024)]
        picked = {k: torch.cat([part[k] for part in logits]).argmax(-1).tolist() for k in names}
        return [{k: names[k][picked[k][i]] for k in names} for i in range(len(x))]

    def judge_accuracy(self, n: int = 2000) -> Dict[str, float]:
        """The heads' accuracy per attribute on n renders that neither they nor the reference were made from."""
        pool = self._pool()
        n = min(n, len(pool.images))
        verdicts = self.judge(pool.images[:n].float() / 127.5 - 1)
        names = self.data.all_labels
        return {k: float(np.mean([v[k] == names[k][i] for v, i in zip(verdicts, pool.labels[k][:n].tolist())]))
                for k in names}

    def _pool(self):
        if self._floor_pool is None:
            self._floor_pool = self.data.render(REFERENCE_SIZE, FLOOR_SEED)
        return self._floor_pool

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
        ({attribute: class name}), so they follow the prompts' mix of attributes."""
        pool = self._pool()
        names = list(targets[0]) if targets else []
        labels = {k: pool.labels[k].tolist() for k in names}
        key = [tuple(self.data.labels[k][labels[k][i]] for k in names) for i in range(len(pool.images))]
        order = torch.randperm(len(key), generator=torch.Generator().manual_seed(seed)).tolist()
        picked: List[int] = []
        used = set()
        for target in targets:
            want = tuple(target[k] for k in names)
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
