"""Sampling from a trained checkpoint: load it with its text encoder, draw guidance-scale grids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .checkpoint import load_model
from .config import TrainingConfig
from .diffusion import DDIMSampler, DDPMSampler, noise_schedule_for, randn, sample
from .text_encoder import EmbeddingCache


@dataclass
class Pipeline:
    """What sampling needs, loaded from one checkpoint."""
    model: torch.nn.Module
    config: TrainingConfig
    embed: object  # captions [N] -> [N x D] (EmbeddingCache)
    noise_schedule: dict

    def sampler(self, kind: str = "ddim", dynamic_thresholding_ratio: Optional[float] = None):
        if kind not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler {kind!r}; choose 'ddim' or 'ddpm'")
        cls = DDIMSampler if kind == "ddim" else DDPMSampler
        return cls(self.noise_schedule, self.config.clip_sample_range, dynamic_thresholding_ratio)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(self, prompts: Sequence[str], guidance_scale: float = 3.0, num_inference_steps: int = 50,
                 seed: int = 0, sampler: str = "ddim", progress: bool = False, negative_prompt: Optional[str] = None,
                 guidance_rescale: float = 0.0, guidance_interval=None,
                 dynamic_thresholding_ratio: Optional[float] = None) -> torch.Tensor:
        """Images [N x 3 x H x W] in [-1, 1] for N prompts. A prompt of None means unconditional (null).
        The guidance options (all off by default) are `sample`'s and the sampler's."""
        r = self.config.resolution
        g = torch.Generator().manual_seed(seed)
        x_T = randn((len(prompts), 3, r, r), g, self.device)
        # A prompt of None gets the learned null embedding itself, and still goes through the CFG
        # mix: so "the null prompt at any s equals s = 0" is shown, not assumed.
        null = torch.tensor([p is None for p in prompts], device=self.device)
        with torch.no_grad():
            cond = self.model.swap_in_null(self.embed(["" if p is None else p for p in prompts], self.device),
                                           len(prompts), uncond_mask=null)
        negative = None if negative_prompt is None else self.embed([negative_prompt] * len(prompts), self.device)
        return sample(self.model, cond, self.sampler(sampler, dynamic_thresholding_ratio), guidance_scale,
                      num_inference_steps, x_T=x_T, generator=g, progress=progress, negative_embeddings=negative,
                      guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)


def load_pipeline(checkpoint: str, device: Optional[str] = None, ema: bool = True) -> Pipeline:
    model, config = load_model(checkpoint, device, ema)
    device = str(next(model.parameters()).device)
    embed = EmbeddingCache.for_config(config, device)
    schedule = noise_schedule_for(config, device)
    return Pipeline(model, config, embed, schedule)


def guidance_grid(pipe: Pipeline, prompts: List[str], scales: Sequence[float], num_inference_steps: int = 50,
                  seed: int = 0, sampler: str = "ddim", **options) -> torch.Tensor:
    """[len(prompts) * len(scales) x 3 x H x W], prompt-major. Each prompt keeps its starting noise across
    scales, so a row shows what guidance alone changes. options: the Pipeline's guidance options."""
    per_scale = [pipe(prompts, s, num_inference_steps, seed=seed, sampler=sampler, **options)
                 for s in scales]  # [P x 3 x H x W] each
    return torch.stack(per_scale, dim=1).flatten(0, 1)
