"""Guidance beyond CFG (lib_cfg.guidance), each mix against diffusers' guider on the same predictions:
AdaptiveProjectedGuidance (APG), ClassifierFreeZeroStarGuidance (CFG-Zero*) and AutoGuidance, to 1e-5.
Where diffusers applies a method differently from its paper, the paper's formula is what is tested."""
import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, AutoGuidance, ClassifierFreeZeroStarGuidance
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

from lib_cfg.config import get_preset
from lib_cfg.diffusion import DDIMSampler, noise_schedule_for, sample
from lib_cfg.guidance import Guidance, Momentum, apg, autoguidance, cfg_zero_star
from lib_cfg.model import create_unet_model

SCALES = [0.0, 1.0, 1.5, 3.0, 7.5]


def predictions(seed=0, n=4):
    """A conditional and an unconditional prediction that are correlated, as a model's are."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, 3, 16, 16, generator=g)
    return cond, 0.8 * cond + 0.3 * torch.randn(n, 3, 16, 16, generator=g)


def at_step(guider, step=0):
    guider.set_state(step, 10, torch.tensor(999))
    return guider


@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("eta, norm_threshold", [(0.0, 0.0), (0.5, 0.0), (0.0, 5.0), (1.0, 2.0)])
def test_apg_equals_adaptive_projected_guidance_in_the_papers_formulation(s, eta, norm_threshold):
    # The paper: D_cond + (s - 1) update. diffusers' use_original_formulation=True with guidance_scale s - 1.
    cond, uncond = predictions()
    theirs = at_step(AdaptiveProjectedGuidance(guidance_scale=s - 1, eta=eta, use_original_formulation=True,
                                               adaptive_projected_guidance_rescale=norm_threshold))
    torch.testing.assert_close(apg(cond, uncond, s, eta, norm_threshold), theirs.forward(cond, uncond).pred,
                               rtol=0, atol=1e-5)


def test_apg_momentum_over_steps_equals_diffusers():
    cond, uncond = predictions(1)
    theirs = AdaptiveProjectedGuidance(guidance_scale=2.0, eta=0.0, adaptive_projected_guidance_momentum=-0.5,
                                       adaptive_projected_guidance_rescale=4.0, use_original_formulation=True)
    theirs.momentum_buffer, ours = MomentumBuffer(-0.5), Momentum(-0.5)  # what diffusers makes at step 0
    for step in range(5):  # the running average carries over the steps
        c = cond + 0.2 * step
        torch.testing.assert_close(apg(c, uncond, 3.0, 0.0, 4.0, ours), at_step(theirs, step).forward(c, uncond).pred,
                                   rtol=0, atol=1e-5)


def test_apg_with_eta_1_and_nothing_else_is_cfg_and_diffusers_default_is_another_formula():
    cond, uncond = predictions(2)
    cfg = uncond + 3.0 * (cond - uncond)
    torch.testing.assert_close(apg(cond, uncond, 3.0, eta=1.0), cfg, rtol=0, atol=1e-5)
    # diffusers' default starts from D_uncond with s itself: equal to the paper only at eta = 1.
    default = at_step(AdaptiveProjectedGuidance(guidance_scale=3.0, eta=0.0, adaptive_projected_guidance_rescale=0))
    assert not torch.allclose(default.forward(cond, uncond).pred, apg(cond, uncond, 3.0, eta=0.0), atol=1e-3)


@pytest.mark.parametrize("s", SCALES)
def test_cfg_zero_star_equals_classifier_free_zero_star_guidance(s):
    cond, uncond = predictions(3)
    theirs = at_step(ClassifierFreeZeroStarGuidance(guidance_scale=s, zero_init_steps=0))
    torch.testing.assert_close(cfg_zero_star(cond, uncond, s), theirs.forward(cond, uncond).pred, rtol=0, atol=1e-5)
    # a* is the least-squares scale of uncond onto cond: the residual is orthogonal to uncond.
    c, u = cond.flatten(1), uncond.flatten(1)
    alpha = (c * u).sum(1, keepdim=True) / (u * u).sum(1, keepdim=True)
    assert torch.allclose(((c - alpha * u) * u).sum(1), torch.zeros(len(c)), atol=1e-3)


@pytest.mark.parametrize("s", SCALES)
def test_autoguidance_equals_diffusers_autoguidance_mix(s):
    cond, bad = predictions(4)  # bad: the weaker model's conditional prediction
    theirs = at_step(AutoGuidance(guidance_scale=s, auto_guidance_layers=[0], dropout=1.0))
    torch.testing.assert_close(autoguidance(cond, bad, s), theirs.forward(cond, bad).pred, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = get_preset("ci", device="cpu")
    main, weak = (create_unet_model(config, "cpu", 384, verbose=False).eval() for _ in range(2))
    with torch.no_grad():  # the output layers start at zero: perturb so the predictions depend on the text
        for p in list(main.parameters()) + list(weak.parameters()):
            p.add_(torch.randn_like(p) * 0.02)
    return config, main, weak


def test_sampling_with_each_method_at_s_1_is_the_conditional_model(models):
    # Every mix is exactly the conditional prediction at s = 1, so all methods sample the same images.
    config, main, weak = models
    sampler, te = DDIMSampler(noise_schedule_for(config)), torch.randn(3, 384)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(3, 3, 16, 16, generator=g)
    reference = sample(main, te, sampler, 1.0, 5, x_T=x_T, progress=False)
    for guidance in (Guidance("apg", momentum=-0.5, norm_threshold=3.0), Guidance("cfg-zero-star"),
                     Guidance("autoguidance", guide_model=weak)):
        assert torch.equal(sample(main, te, sampler, 1.0, 5, x_T=x_T, progress=False, guidance=guidance), reference)
    guided = sample(main, te, sampler, 4.0, 5, x_T=x_T, progress=False, guidance=Guidance("autoguidance", guide_model=weak))
    assert not torch.allclose(guided, reference, atol=1e-3)


def test_apg_in_sampling_works_on_x0_and_eta_1_gives_cfg(models):
    config, main, _ = models
    sampler, te = DDIMSampler(noise_schedule_for(config)), torch.randn(3, 384)
    x_T = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = sample(main, te, sampler, 3.0, 5, x_T=x_T, progress=False)
    torch.testing.assert_close(sample(main, te, sampler, 3.0, 5, x_T=x_T, progress=False,
                                      guidance=Guidance("apg", eta=1.0)), cfg, rtol=0, atol=1e-4)
    assert not torch.allclose(sample(main, te, sampler, 3.0, 5, x_T=x_T, progress=False, guidance=Guidance("apg")),
                              cfg, atol=1e-3)


def test_cfg_zero_star_zero_init_leaves_x_t_in_place(models):
    # For an eps model "zero velocity" means predicting x0 = 0: a DDIM step then only rescales x_t.
    config, main, _ = models
    sampler, te = DDIMSampler(noise_schedule_for(config)), torch.randn(2, 384)
    sampler.set_timesteps(10)
    t0, t1 = sampler.timesteps[:2].tolist()
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    eps = Guidance("cfg-zero-star", zero_init_steps=1).eps_fn(main, te, sampler)
    with torch.no_grad():
        first = sampler.step(eps(x_t, torch.full((2,), t0), 3.0), t0, x_t)
        second = eps(first, torch.full((2,), t1), 3.0)  # step 2: the CFG-Zero* mix, not zero-init
    a = sampler.schedule["alphas_cumprod"]
    torch.testing.assert_close(first, x_t * ((1 - a[t1]) / (1 - a[t0])).sqrt(), rtol=0, atol=1e-4)
    with torch.no_grad():
        uncond, cond = main(first, torch.full((2,), t1), None), main(first, torch.full((2,), t1), te)
    torch.testing.assert_close(second, cfg_zero_star(cond, uncond, 3.0), rtol=0, atol=1e-4)


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown guidance 'pag'.*cfg, apg, cfg-zero-star, autoguidance"):
        Guidance("pag")
    with pytest.raises(ValueError, match="--guide_checkpoint"):
        Guidance("autoguidance")
