"""The hand-written diffusion math against diffusers' schedulers, and the CFG identities."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lib_cfg.config import get_preset
from lib_cfg.diffusion import (DDIMSampler, DDPMSampler, add_noise, create_noise_schedule, forward_diffusion, guided_eps,
                               noise_schedule_for, sample)
from lib_cfg.model import UNetModel

T = 1000


def ddpm_reference():
    return DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small",
                         prediction_type="epsilon", timestep_spacing="leading")


def ddim_reference():
    return DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                         prediction_type="epsilon", timestep_spacing="leading")


def test_schedule_matches_diffusers():
    ours, ref = create_noise_schedule(T), ddpm_reference()
    torch.testing.assert_close(ours["betas"], ref.betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours["alphas_cumprod"], ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert ours["betas"][0].item() == pytest.approx(1e-4) and ours["betas"][-1].item() == pytest.approx(0.02)


def test_the_schedule_a_config_describes_keeps_every_field():
    # Training, sampling and the benchmarks all build it this way, so a preset's betas reach each of them.
    config = get_preset("ci", num_denoising_steps=500, beta_start=2e-4, beta_end=0.03)
    ref = DDPMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03, beta_schedule="linear")
    ours = noise_schedule_for(config)
    assert len(ours["betas"]) == 500
    torch.testing.assert_close(ours["alphas_cumprod"], ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_matches_diffusers_squaredcos_cap_v2():
    ours = create_noise_schedule(T, beta_schedule="cosine")
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours["betas"], ref.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["alphas_cumprod"], ref.alphas_cumprod, rtol=1e-4, atol=1e-7)
    # what the config field reaches: training and sampling build the schedule from it
    torch.testing.assert_close(noise_schedule_for(get_preset("ci", beta_schedule="cosine"))["betas"], ref.betas,
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="beta_schedule"):
        create_noise_schedule(T, beta_schedule="sigmoid")

def test_add_noise_matches_diffusers():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 3, 8, 8, generator=g)
    t = torch.randint(0, T, (16,), generator=g)
    ours = add_noise(x0, eps, t, create_noise_schedule(T))
    torch.testing.assert_close(ours, ddpm_reference().add_noise(x0, eps, t), rtol=0, atol=1e-5)
    x_t, noise = forward_diffusion(x0, t, create_noise_schedule(T), noise=eps)
    assert torch.equal(x_t, ours) and noise is eps


@pytest.mark.parametrize("num_steps", [1000, 50, 7])
def test_ddpm_step_matches_diffusers(num_steps):
    ours, ref = DDPMSampler(create_noise_schedule(T)), ddpm_reference()
    ours.set_timesteps(num_steps), ref.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    for t in ours.timesteps.tolist()[:: max(1, num_steps // 10)] + [0]:
        eps = torch.randn(4, 3, 8, 8, generator=g) * 1.5  # large enough that x0 clipping is exercised
        a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        b = ref.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_steps", [50, 25, 10, 3])
def test_ddim_step_matches_diffusers(num_steps):
    ours, ref = DDIMSampler(create_noise_schedule(T)), ddim_reference()
    ours.set_timesteps(num_steps), ref.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, 8, generator=g)
    for t in ours.timesteps.tolist():
        eps = torch.randn(4, 3, 8, 8, generator=g) * 1.5
        a = ours.step(eps, t, x)
        # we re-derive eps from the clipped x0, as guided-diffusion does: diffusers' use_clipped_model_output
        b = ref.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        x = a


@pytest.mark.parametrize("eta,clip", [(0.5, True), (1.0, True), (0.3, False)])
def test_ddim_with_eta_matches_diffusers_with_the_same_noise(eta, clip):
    ours = DDIMSampler(create_noise_schedule(T), clip_sample_range=1.0 if clip else None, eta=eta)
    ref = DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, clip_sample=clip,
                        clip_sample_range=1.0, set_alpha_to_one=True, timestep_spacing="leading")
    ours.set_timesteps(25), ref.set_timesteps(25)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 8, 8, generator=g)
    for t in ours.timesteps.tolist():
        eps, noise = torch.randn(4, 3, 8, 8, generator=g) * 1.5, torch.randn(4, 3, 8, 8, generator=g)
        a = ours.step(eps, t, x, noise=noise)
        b = ref.step(eps, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=noise).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        x = a
    assert not torch.equal(ours.step(eps, 500, x, noise=noise), ours.step(eps, 500, x, noise=-noise))  # noise is used


def test_ddim_at_eta_1_is_the_respaced_ddpm_step():
    # The two samplers are one formula at eta = 1 (Song et al. 2021, eq. 16): same x_t, eps and noise, same x_{t-1}.
    ddim, ddpm = DDIMSampler(create_noise_schedule(T), eta=1.0), DDPMSampler(create_noise_schedule(T))
    ddim.set_timesteps(10), ddpm.set_timesteps(10)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 8, 8, generator=g)
    for t in ddpm.timesteps.tolist():
        eps, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
        a, b = ddim.step(eps, t, x, noise=noise), ddpm.step(eps, t, x, noise=noise)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        x = b
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(create_noise_schedule(T), eta=1.5)

def test_ddim_without_clipping_matches_diffusers():
    ours = DDIMSampler(create_noise_schedule(T), clip_sample_range=None)
    ref = DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="leading")
    ours.set_timesteps(20), ref.set_timesteps(20)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g)
    for t in ours.timesteps.tolist():
        eps = torch.randn(2, 3, 8, 8, generator=g)
        torch.testing.assert_close(ours.step(eps, t, x), ref.step(eps, t, x).prev_sample, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    m = UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                  num_heads=2, text_embed_dim=12).eval()
    with torch.no_grad():  # make the output depend on the text (zero-initialised layers would hide it)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_cfg_identities(tiny_model):
    g = torch.Generator().manual_seed(0)
    x, te = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 12, generator=g)
    t = torch.tensor([10, 500, 999])
    with torch.no_grad():
        uncond = tiny_model(x, t, None)
        cond = tiny_model(x, t, te)
        assert not torch.allclose(uncond, cond, atol=1e-4), "the model must depend on the text for this test"
        assert torch.equal(guided_eps(tiny_model, x, t, te, 0.0), uncond)  # s = 0: exactly unconditional
        assert torch.equal(guided_eps(tiny_model, x, t, te, 1.0), cond)  # s = 1: exactly conditional
        for s in (3.0, 7.5, -1.0):
            # One batched pass of 2N rows rounds slightly differently from two N-row passes, and s
            # amplifies that difference: hence a tolerance that grows with |s|.
            torch.testing.assert_close(guided_eps(tiny_model, x, t, te, s), uncond + s * (cond - uncond),
                                       rtol=0, atol=1e-5 * (1 + abs(s)))
        # The null prompt at any scale is the unconditional model.
        null = tiny_model.null_text_embed.expand(3, -1)
        for s in (3.0, 7.5):
            torch.testing.assert_close(guided_eps(tiny_model, x, t, null, s), uncond, rtol=0, atol=1e-5 * (1 + s))


def test_sample_loop_shapes_and_determinism(tiny_model):
    sampler = DDIMSampler(create_noise_schedule(T))
    te = torch.randn(2, 12)
    a = sample(tiny_model, te, sampler, 3.0, 5, shape=(2, 3, 8, 8), generator=torch.Generator().manual_seed(0),
               progress=False)
    b = sample(tiny_model, te, sampler, 3.0, 5, shape=(2, 3, 8, 8), generator=torch.Generator().manual_seed(0),
               progress=False)
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert sampler.timesteps.tolist() == [800, 600, 400, 200, 0]
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampler.set_timesteps(0)
