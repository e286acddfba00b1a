"""Classifier guidance (Dhariwal & Nichol 2021): an unconditional diffusion model steered by the
gradient of a separately trained classifier that sees *noisy* images.

    eps_hat = eps_uncond(x_t, t) - s * sqrt(1 - alpha-bar_t) * grad_x log p(y | x_t, t)

The classifier predicts the two attributes of the synthetic shapes (colour and shape) from x_t
and t, so log p(y | x_t) = log p(colour | x_t) + log p(shape | x_t).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .diffusion import _at, add_noise, denoise
from .evaluation import evaluation_prompts, sweep
from .model import Downsample, ResBlock, norm, timestep_embedding
from .synthetic import ATTRIBUTES


class NoisyClassifier(nn.Module):
    """logits for each attribute from x_t [N x 3 x H x W] and t [N]: {"color": [N x 6], "shape": [N x 3]}."""

    def __init__(self, channels: int = 32, attributes: Dict[str, list] = ATTRIBUTES):
        super().__init__()
        self.channels = channels
        emb = 4 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        c2 = 2 * channels
        self.blocks = nn.ModuleList([ResBlock(channels, emb, channels), Downsample(channels),
                                     ResBlock(channels, emb, c2), Downsample(c2), ResBlock(c2, emb, c2)])
        self.out_norm = norm(c2)
        self.heads = nn.ModuleDict({name: nn.Linear(c2, len(values)) for name, values in attributes.items()})

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Dict[str, torch.Tensor]:
        emb = self.time_embed(timestep_embedding(t, self.channels))
        h = self.stem(x_t)
        for block in self.blocks:
            h = block(h, emb)
        h = F.silu(self.out_norm(h)).mean(dim=(2, 3))  # global average pool: [N x 2C]
        return {name: head(h) for name, head in self.heads.items()}

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, labels: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(y | x_t, t) [N], summed over the attributes given in labels ({name: class index [N]})."""
        logits = self(x_t, t)
        return sum(F.log_softmax(logits[k], dim=-1).gather(1, v[:, None]).squeeze(1) for k, v in labels.items())


def dataset_labels(dataset) -> Dict[str, torch.Tensor]:
    """Class indices of a SyntheticShapes dataset: {"color": [N], "shape": [N]}."""
    return {"color": dataset.colors.long(), "shape": dataset.shapes.long()}


def train_classifier(classifier: NoisyClassifier, dataset, noise_schedule: Dict, steps: int = 1000,
                     batch_size: int = 64, learning_rate: float = 2e-3, seed: int = 0, progress: bool = True):
    """Cross-entropy on noisy images at uniformly drawn t. Returns the per-step losses."""
    device = next(classifier.parameters()).device
    g = torch.Generator().manual_seed(seed)
    images, labels = dataset.images, dataset_labels(dataset)
    T = len(noise_schedule["betas"])
    opt = torch.optim.AdamW(classifier.parameters(), lr=learning_rate)
    classifier.train()
    losses = []
    bar = tqdm(range(steps), desc="training classifier", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x0 = (images[idx].float() / 127.5 - 1).to(device)
        t = torch.randint(0, T, (batch_size,), generator=g).to(device)
        x_t = add_noise(x0, torch.randn(x0.shape, generator=g).to(device), t, noise_schedule)
        logits = classifier(x_t, t)
        loss = sum(F.cross_entropy(logits[k], v[idx].to(device)) for k, v in labels.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return losses


@torch.no_grad()
def classifier_accuracy_by_t(classifier, dataset, noise_schedule, timesteps: Iterable[int], n: int = 512,
                             seed: int = 0) -> Dict[int, Dict[str, float]]:
    """How well the classifier reads each attribute at each noise level t."""
    device = next(classifier.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x0 = (dataset.images[:n].float() / 127.5 - 1).to(device)
    labels = {k: v[:n].to(device) for k, v in dataset_labels(dataset).items()}
    classifier.eval()
    out = {}
    for t in timesteps:
        tt = torch.full((len(x0),), int(t), device=device)
        logits = classifier(add_noise(x0, torch.randn(x0.shape, generator=g).to(device), tt, noise_schedule), tt)
        out[int(t)] = {k: (logits[k].argmax(-1) == v).float().mean().item() for k, v in labels.items()}
    return out


def classifier_guided_eps(model, classifier, x_t: torch.Tensor, t: torch.Tensor, labels: Dict[str, torch.Tensor],
                          scale: float, noise_schedule: Dict) -> torch.Tensor:
    """eps_uncond - scale * sqrt(1 - alpha-bar_t) * grad_x log p(y | x_t): the score of p(x) p(y|x)^scale."""
    with torch.no_grad():
        eps = model(x_t, t, None)  # the unconditional model: the null embedding
    if scale == 0:
        return eps
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        grad = torch.autograd.grad(classifier.log_prob(x, t, labels).sum(), x)[0]
    return eps - scale * _at(noise_schedule["sqrt_one_minus_alphas_cumprod"], t, x_t) * grad


def sample_with_classifier(model, classifier, labels: Dict[str, torch.Tensor], sampler, scale: float,
                           x_T: torch.Tensor, noise_schedule: Dict, num_inference_steps: int = 50,
                           progress: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Classifier-guided sampling from x_T [N x 3 x H x W] towards labels ({name: [N]}). Returns [N x 3 x H x W].
    generator: a stochastic sampler's noise at each step."""
    model.eval(), classifier.eval()
    return denoise(lambda x_t, t: classifier_guided_eps(model, classifier, x_t, t, labels, scale, noise_schedule),
                   sampler, x_T, num_inference_steps, generator, progress=progress)


def classifier_adherence_sweep(model, classifier, scales: Iterable[float], sampler, noise_schedule: Dict,
                               n_per_prompt: int = 6, num_inference_steps: int = 50, seed: int = 0,
                               progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Per-attribute accuracy of classifier-guided samples at each classifier scale (same format as CFG's)."""

    device = next(model.parameters()).device
    _, targets = evaluation_prompts(n_per_prompt)
    labels = {k: torch.tensor([v.index(tg[k]) for tg in targets], device=device) for k, v in ATTRIBUTES.items()}
    return sweep(lambda s, rows, x_T, g: sample_with_classifier(
        model, classifier, {k: v[rows] for k, v in labels.items()}, sampler, s, x_T, noise_schedule,
        num_inference_steps, generator=g),
                 scales, n_per_prompt, model.resolution, device, seed, progress=progress)
