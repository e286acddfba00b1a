"""The guidance options beyond plain CFG: each off by default, each checked against its definition
(and against diffusers where diffusers has it)."""
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from lib_cfg.diffusion import (DDIMSampler, DDPMSampler, create_noise_schedule, denoise, dynamic_threshold, guided_eps,
                               rescale_guidance, sample)
from lib_cfg.model import UNetModel

T = 1000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                  num_heads=2, text_embed_dim=12).eval()
    with torch.no_grad():  # zero-initialised output layers would hide the text
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("num_steps", [50, 10])
def test_dynamic_thresholding_matches_diffusers(num_steps):
    ours = DDIMSampler(create_noise_schedule(T), dynamic_thresholding_ratio=0.995, sample_max_value=2.0)
    ref = DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, clip_sample=False, thresholding=True,
                        dynamic_thresholding_ratio=0.995, sample_max_value=2.0, set_alpha_to_one=True,
                        timestep_spacing="leading")
    ours.set_timesteps(num_steps), ref.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 8, 8, generator=g)
    thresholded = 0
    for t in ours.timesteps.tolist():
        eps = torch.randn(3, 3, 8, 8, generator=g) * 1.5  # x0 overshoots [-1, 1]: the threshold acts
        thresholded += int((ours.predict_x0(eps, t, x).abs() > 1).sum() == 0)
        a = ours.step(eps, t, x)
        torch.testing.assert_close(a, ref.step(eps, t, x, use_clipped_model_output=True).prev_sample, rtol=0, atol=1e-5)
        x = a
    assert thresholded == num_steps  # x0 always ends inside [-1, 1]


def test_dynamic_threshold_divides_by_the_quantile():
    x0 = torch.linspace(-3, 3, 3 * 4 * 4).reshape(1, 3, 4, 4)
    s = torch.quantile(x0.abs().flatten(), 0.9)
    torch.testing.assert_close(dynamic_threshold(x0, 0.9, 10.0), x0.clamp(-s, s) / s)
    small = torch.full((1, 3, 4, 4), 0.5)
    assert torch.equal(dynamic_threshold(small), small)  # s is at least 1: nothing to do inside the range
    assert DDPMSampler(create_noise_schedule(T)).dynamic_thresholding_ratio is None  # off by default


def test_guidance_rescale_matches_diffusers():
    g = torch.Generator().manual_seed(5)
    eps, cond = torch.randn(4, 3, 8, 8, generator=g) * 3, torch.randn(4, 3, 8, 8, generator=g)
    for phi in (0.0, 0.7, 1.0):
        torch.testing.assert_close(rescale_guidance(eps, cond, phi), rescale_noise_cfg(eps, cond, phi), rtol=0,
                                   atol=1e-6)
    std = rescale_guidance(eps, cond, 1.0).std(dim=(1, 2, 3))
    torch.testing.assert_close(std, cond.std(dim=(1, 2, 3)))  # phi = 1: exactly the conditional std


def test_negative_prompt_replaces_the_null_branch(model):
    g = torch.Generator().manual_seed(6)
    x, te, neg = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 12, generator=g), torch.randn(3, 12, generator=g)
    t = torch.tensor([10, 500, 999])
    with torch.no_grad():
        cond, negative, null = model(x, t, te), model(x, t, neg), model(x, t, None)
        for s in (3.0, 7.5):
            expected = negative + s * (cond - negative)
            torch.testing.assert_close(guided_eps(model, x, t, te, s, negative_embeddings=neg), expected, rtol=0,
                                       atol=1e-5 * (1 + s))
            # the null prompt (None) with a negative: eps(null) guided away from the negative
            torch.testing.assert_close(guided_eps(model, x, t, None, s, negative_embeddings=neg),
                                       negative + s * (null - negative), rtol=0, atol=1e-5 * (1 + s))
        assert torch.equal(guided_eps(model, x, t, te, 0.0, negative_embeddings=neg), negative)
        rescaled = guided_eps(model, x, t, te, 7.5, guidance_rescale=1.0)
        torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_guidance_interval_guides_only_inside(model):
    sampler = DDIMSampler(create_noise_schedule(T))
    te = torch.randn(2, 12, generator=torch.Generator().manual_seed(7))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    interval = (200, 600)
    got = sample(model, te, sampler, 5.0, 10, x_T=x_T, progress=False, guidance_interval=interval)

    def by_hand(x_t, t):  # s = 5 inside the interval, the conditional prediction outside
        s = 5.0 if interval[0] <= int(t[0]) <= interval[1] else 1.0
        return guided_eps(model, x_t, t, te, s)

    with torch.no_grad():
        expected = denoise(by_hand, sampler, x_T, 10, progress=False)
    assert torch.equal(got, expected)
    assert not torch.equal(got, sample(model, te, sampler, 5.0, 10, x_T=x_T, progress=False))
    everywhere = sample(model, te, sampler, 5.0, 10, x_T=x_T, progress=False, guidance_interval=(0, T - 1))
    assert torch.equal(everywhere, sample(model, te, sampler, 5.0, 10, x_T=x_T, progress=False))


def test_options_are_checked(model):
    with pytest.raises(ValueError, match="guidance_rescale"):
        sample(model, torch.zeros(1, 12), DDIMSampler(create_noise_schedule(T)), 3.0, 2, shape=(1, 3, 8, 8),
               guidance_rescale=1.5, progress=False)


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0, 3.0, 7.5, -1.0])
def test_cfg_eps_is_the_lesson_formula_and_matches_diffusers_guider_and_guided_eps(model, s):
    """cfg_eps (two passes, as notebook 04 shows it) = eps_uncond + s (eps_cond - eps_uncond), which is
    diffusers' ClassifierFreeGuidance with its default formulation (Ho & Salimans' w is s - 1:
    use_original_formulation=True computes eps_cond + w (eps_cond - eps_uncond)); guided_eps (one batched
    pass) gives the same up to rounding."""
    from diffusers.guiders import ClassifierFreeGuidance

    from lib_cfg.diffusion import cfg_eps

    g = torch.Generator().manual_seed(1)
    x, te, t = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 12, generator=g), torch.tensor([5, 400, 999])
    with torch.no_grad():
        uncond, cond = model(x, t, None), model(x, t, te)
        ours = cfg_eps(model, x, t, te, s)
        assert torch.equal(ours, uncond + s * (cond - uncond))
        reference = ClassifierFreeGuidance(guidance_scale=s).forward(cond, uncond).pred
        original = ClassifierFreeGuidance(guidance_scale=s - 1, use_original_formulation=True).forward(cond, uncond).pred
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6 * (1 + abs(s)))
        torch.testing.assert_close(ours, original, rtol=0, atol=1e-6 * (1 + abs(s)))
        torch.testing.assert_close(guided_eps(model, x, t, te, s), ours, rtol=0, atol=1e-5 * (1 + abs(s)))
