"""Diffusion math, written out by hand: the noise schedule, the forward process, DDPM and
DDIM reverse steps, and classifier-free guided sampling.

Nothing here wraps the model: functions take it as an argument. Names follow diffusers
(`add_noise`, `set_timesteps`, `step`, `alphas_cumprod`) so a learner can carry them over;
`tests/test_diffusion.py` checks each step against diffusers' schedulers to 1e-5.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from tqdm.auto import tqdm


BETA_SCHEDULES = ("linear", "cosine")


def create_noise_schedule(n_T: int = 1000, device: str = "cpu", beta_start: float = 1e-4,
                          beta_end: float = 0.02, beta_schedule: str = "linear") -> Dict[str, torch.Tensor]:
    """The betas over n_T steps, and what follows from them. Each is [n_T].

    "linear" (the lesson's, Ho et al. 2020): betas from beta_start to beta_end. "cosine" (Nichol & Dhariwal
    2021; diffusers' "squaredcos_cap_v2"): alpha-bar_t proportional to cos^2((((t + 1) / n_T) + 0.008) / 1.008 * pi / 2),
    so the signal fades evenly instead of being gone long before the last step; each beta is capped at 0.999."""
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n_T, dtype=torch.float32)
    elif beta_schedule == "cosine":
        def alpha_bar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n_T) / alpha_bar(i / n_T), 0.999) for i in range(n_T)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES}")
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)  # alpha-bar_t: how much signal is left at step t
    schedule = {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": alphas_cumprod,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
    }
    return {k: v.to(device) for k, v in schedule.items()}


def noise_schedule_for(config, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """The schedule a TrainingConfig describes (num_denoising_steps, beta_schedule, beta_start, beta_end): the
    one way training, sampling and benchmarks build it, so none can drop a field."""
    return create_noise_schedule(config.num_denoising_steps, device, config.beta_start, config.beta_end,
                                 config.beta_schedule)


def snr(noise_schedule: Dict, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) at timesteps t [N] -> [N]."""
    a = noise_schedule["alphas_cumprod"].to(t.device)[t]
    return a / (1 - a)


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] shaped [N x 1 x 1 x 1] to broadcast against x [N x C x H x W]."""
    return values.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, noise_schedule: Dict) -> torch.Tensor:
    """q(x_t | x_0): x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps. All [N x C x H x W], t: [N]."""
    return (_at(noise_schedule["sqrt_alphas_cumprod"], t, x0) * x0
            + _at(noise_schedule["sqrt_one_minus_alphas_cumprod"], t, x0) * eps)


def forward_diffusion(x0: torch.Tensor, t: torch.Tensor, noise_schedule: Dict, noise: Optional[torch.Tensor] = None):
    """The lesson's name for the forward process: returns (x_t, noise)."""
    if noise is None:
        noise = torch.randn_like(x0)
    return add_noise(x0, noise, t, noise_schedule), noise


class DDPMSampler:
    """Ancestral sampling (Ho et al. 2020), the posterior q(x_{t-1} | x_t, x0) with x0 predicted from eps.

    With `set_timesteps(k)` for k < T it skips steps (the respacing diffusers also does), using the
    alpha-bar of the previous visited timestep.

    dynamic_thresholding_ratio: instead of clipping the predicted x0 to [-r, r], Imagen's dynamic
    thresholding (Saharia et al. 2022): per image, s = that quantile of |x0| (at least 1, at most
    sample_max_value); x0 is clipped to [-s, s] and divided by s, so saturated pixels are pulled in
    rather than flattened. diffusers: `thresholding=True, dynamic_thresholding_ratio, sample_max_value`.
    """

    def __init__(self, noise_schedule: Dict, clip_sample_range: float = 1.0,
                 dynamic_thresholding_ratio: Optional[float] = None, sample_max_value: float = 2.0):
        self.schedule = noise_schedule
        self.clip_sample_range = clip_sample_range
        self.dynamic_thresholding_ratio = dynamic_thresholding_ratio
        self.sample_max_value = sample_max_value
        self.num_train_timesteps = len(noise_schedule["betas"])
        self.set_timesteps(self.num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Timesteps visited, from noisiest to cleanest (spaced as diffusers' 'leading' spacing)."""
        if not 0 < num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}")
        ratio = self.num_train_timesteps // num_inference_steps
        self.num_inference_steps = num_inference_steps
        self.timesteps = (torch.arange(num_inference_steps) * ratio).flip(0)
        self.step_ratio = ratio

    def _alpha_bars(self, t: int, x: torch.Tensor):
        ac = self.schedule["alphas_cumprod"]
        prev = t - self.step_ratio
        a_t = ac[t].to(x.device, x.dtype)
        a_prev = ac[prev].to(x.device, x.dtype) if prev >= 0 else torch.ones((), device=x.device, dtype=x.dtype)
        return a_t, a_prev

    def predict_x0(self, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        a_t = self.schedule["alphas_cumprod"][t].to(x_t.device, x_t.dtype)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if self.dynamic_thresholding_ratio:
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0.clamp(-self.clip_sample_range, self.clip_sample_range) if self.clip_sample_range else x0

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t [N x C x H x W] and the predicted eps at integer timestep t -> x_{t-1} (one visited step back)."""
        a_t, a_prev = self._alpha_bars(t, x_t)
        beta_t = 1 - a_t / a_prev  # the effective beta between the two visited steps
        x0 = self.predict_x0(eps, t, x_t)
        # Posterior mean: a weighted mix of the predicted x0 and the current x_t.
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
        if t - self.step_ratio < 0:
            return mean  # the last step adds no noise
        variance = (1 - a_prev) / (1 - a_t) * beta_t
        variance = variance.clamp(min=1e-20)
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device).to(x_t.dtype)
        return mean + variance.sqrt() * noise


class DDIMSampler(DDPMSampler):
    """DDIM (Song et al. 2021): any number of steps; `eta` sets how much fresh noise each step adds.

    eta = 0 is deterministic: x_T fixes the image, and an error in an early eps is never corrected.
    eta = 1 adds the posterior's noise and is then the respaced DDPM step itself (the same formula,
    rearranged); in between, a part of it. diffusers: `DDIMScheduler.step(eta=...)`."""

    def __init__(self, noise_schedule: Dict, clip_sample_range: float = 1.0,
                 dynamic_thresholding_ratio: Optional[float] = None, sample_max_value: float = 2.0, eta: float = 0.0):
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM's noise), got {eta}")
        super().__init__(noise_schedule, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
        self.eta = eta

    def step(self, eps: torch.Tensor, t: int, x_t: torch.Tensor, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        a_t, a_prev = self._alpha_bars(t, x_t)
        x0 = self.predict_x0(eps, t, x_t)
        if self.clip_sample_range or self.dynamic_thresholding_ratio:
            # Re-derive eps from the clipped x0 so the step stays consistent (as diffusers does).
            eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        # sigma_t^2: eta^2 times the posterior variance of the step from t to the previous visited timestep
        std = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).clamp(min=0).sqrt() * eps
        if self.eta == 0 or t - self.step_ratio < 0:
            return x_prev  # deterministic, or the last step (which adds no noise)
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device).to(x_t.dtype)
        return x_prev + std * noise


SAMPLERS = ("ddpm", "ddim")


def sampler_for(config, noise_schedule: Dict, kind: Optional[str] = None, eta: Optional[float] = None,
                dynamic_thresholding_ratio: Optional[float] = None) -> DDPMSampler:
    """The sampler a TrainingConfig describes (sampler, eta, clip_sample_range), or `kind` / `eta` in its place:
    "ddpm" (ancestral; respaced when it takes fewer than T steps) or "ddim" (with `eta`). The one way the
    sample grids, the pipeline and the benchmarks build it."""
    kind = kind or config.sampler
    if kind == "ddpm":
        return DDPMSampler(noise_schedule, config.clip_sample_range, dynamic_thresholding_ratio)
    if kind == "ddim":
        return DDIMSampler(noise_schedule, config.clip_sample_range, dynamic_thresholding_ratio,
                           eta=config.eta if eta is None else eta)
    raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 2.0) -> torch.Tensor:
    """Imagen's dynamic thresholding of x0 [N x C x H x W]: s = the `ratio` quantile of |x0| per image,
    kept in [1, max_value]; clip to [-s, s] and divide by s (s = 1 is plain clipping to [-1, 1])."""
    s = torch.quantile(x0.float().flatten(1).abs(), ratio, dim=1).clamp(1, max_value)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def rescale_guidance(eps: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, section 3.4): bring the guided eps back to the standard deviation
    of the conditional one (large s inflates it: over-exposed, over-saturated images), mixed by phi in [0, 1]."""
    dims = list(range(1, eps.dim()))
    rescaled = eps * (eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * eps


def cfg_eps(model, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor,
            guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance as the lesson writes it: two forward passes, then the mix. All [N x C x H x W]."""
    eps_uncond = model(x_t, t, None)  # None: the learned null embedding, "no caption"
    eps_cond = model(x_t, t, text_embeddings)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_eps(model, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: Optional[torch.Tensor],
               guidance_scale: float, negative_embeddings: Optional[torch.Tensor] = None,
               guidance_rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance, the library's version of `cfg_eps`: eps = eps_uncond + s * (eps_cond - eps_uncond).

    x_t: [N x C x H x W], t: [N], text_embeddings: [N x D] or tokens [N x L x D] (None: unconditional).
    Both predictions come from one batched forward pass of 2N rows. s = 0 and s = 1 need only
    one of them, so we run only that one: s = 0 is then exactly the unconditional model and
    s = 1 exactly the conditional one.
    negative_embeddings: a negative prompt's embeddings, used instead of the null embedding for
    eps_uncond, so guidance pushes away from it. guidance_rescale: phi of `rescale_guidance` (0: off).
    """
    if guidance_scale == 0 or (text_embeddings is None and negative_embeddings is None):
        return model(x_t, t, negative_embeddings)  # None: the null embedding for every row
    if guidance_scale == 1 and text_embeddings is not None:
        return model(x_t, t, text_embeddings)
    eps_uncond, eps_cond = predict_both(model, x_t, t, text_embeddings, negative_embeddings)
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    return rescale_guidance(eps, eps_cond, guidance_rescale) if guidance_rescale else eps


def predict_both(model, x_t: torch.Tensor, t: torch.Tensor, text_embeddings: Optional[torch.Tensor],
                 negative_embeddings: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(eps_uncond, eps_cond), each [N x C x H x W], from one batched forward pass of 2N rows.
    eps_uncond is the null embedding's prediction, or the negative prompt's when one is given."""
    n = x_t.shape[0]
    # Rows given as None are any embeddings of the right shape, swapped for the null one by uncond_mask.
    cond = text_embeddings if text_embeddings is not None else negative_embeddings
    uncond = negative_embeddings if negative_embeddings is not None else cond
    uncond_mask = torch.cat([_mask(x_t, negative_embeddings is None), _mask(x_t, text_embeddings is None)])
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]), uncond_mask=uncond_mask)
    return eps[:n], eps[n:]


def randn(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (so a CPU seed gives the same images anywhere)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


def _mask(x: torch.Tensor, value: bool) -> torch.Tensor:
    return torch.full((x.shape[0],), value, dtype=torch.bool, device=x.device)


def denoise(eps_fn, sampler: DDPMSampler, x_T: torch.Tensor, num_inference_steps: int = 50,
            generator: Optional[torch.Generator] = None, progress: bool = True) -> torch.Tensor:
    """The reverse process: from noise x_T [N x C x H x W], ask eps_fn(x_t, t [N]) for the noise, step back.

    Every sampler in this course is this loop with a different eps_fn (CFG, classifier guidance).
    """
    x_t = x_T
    sampler.set_timesteps(num_inference_steps)
    for t in tqdm(sampler.timesteps.tolist(), desc="sampling", disable=not progress, leave=False):
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps = eps_fn(x_t, t_batch)
        x_t = sampler.step(eps, t, x_t, generator=generator)
    return x_t.clamp(-1, 1)


@torch.inference_mode()
def sample(model, text_embeddings: Optional[torch.Tensor], sampler: DDPMSampler, guidance_scale: float = 3.0,
           num_inference_steps: int = 50, shape=None, generator: Optional[torch.Generator] = None,
           x_T: Optional[torch.Tensor] = None, progress: bool = True,
           negative_embeddings: Optional[torch.Tensor] = None, guidance_rescale: float = 0.0,
           guidance_interval: Optional[Tuple[int, int]] = None, guidance=None) -> torch.Tensor:
    """Generate images from noise with classifier-free guidance.

    text_embeddings: [N x D] (or tokens [N x L x D]; None: unconditional, then give `shape`).
    shape: (N, C, H, W). x_T: optional starting noise [N x C x H x W]. Returns x0 [N x C x H x W] in [-1, 1].
    Options, all off by default: negative_embeddings (a negative prompt, [N x D]); guidance_rescale (phi);
    guidance_interval (lo, hi): guide only at timesteps lo <= t <= hi, elsewhere s = 1 (Kynkaanniemi et al.
    2024: guidance at the noisiest steps mostly costs diversity). Dynamic thresholding is a sampler option.
    guidance: a `lib_cfg.guidance.Guidance` for APG, CFG-Zero* or autoguidance in place of plain CFG.
    """
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
    if not 0 <= guidance_rescale <= 1:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}")
    other = guidance is not None and guidance.method != "cfg"
    if other and (negative_embeddings is not None or guidance_rescale or text_embeddings is None):
        raise ValueError(f"guidance {guidance.method!r} needs a prompt, and takes no negative prompt or "
                         "guidance rescale (those are options of plain cfg)")
    device = next(model.parameters()).device
    x_T = (randn(shape, generator, device) if x_T is None else x_T).to(device)
    was_training = model.training
    model.eval()
    try:
        mix = guidance.eps_fn(model, text_embeddings, sampler) if other else None

        def eps_fn(x_t, t):
            s = guidance_scale
            if guidance_interval is not None and not guidance_interval[0] <= int(t[0]) <= guidance_interval[1]:
                s = 1.0  # outside the interval: the conditional prediction alone
            if mix is not None:
                return mix(x_t, t, s)
            return guided_eps(model, x_t, t, text_embeddings, s, negative_embeddings, guidance_rescale)

        return denoise(eps_fn, sampler, x_T, num_inference_steps, generator, progress)
    finally:
        model.train(was_training)
