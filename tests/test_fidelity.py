"""The fidelity numbers: speckle, the Fréchet distance and its features, and the recipe levers' maths
(Min-SNR weights, logit-normal timesteps) against their references."""
import numpy as np
import pytest
import scipy.linalg
import torch

from lib_cfg import fidelity as fidelity_module
from lib_cfg.config import get_preset
from lib_cfg.diffusion import create_noise_schedule, snr
from lib_cfg.fidelity import SPECKLED, Fidelity, frechet_distance, speckle, speckle_stats
from lib_cfg.synthetic import load_synthetic
from lib_cfg.train import draw_timesteps


@pytest.fixture(scope="module")
def fidelity(data_dir):
    return Fidelity(get_preset("ci", data_dir=data_dir), progress=False)


@pytest.fixture(scope="module")
def real(data_dir):
    ds = load_synthetic(300, 16, 7, data_dir, verbose=False)
    return ds.images.float() / 127.5 - 1


def test_speckle_separates_clean_shapes_from_pixel_noise(real):
    flat = torch.zeros(4, 3, 16, 16)
    assert speckle(flat).tolist() == [0.0] * 4  # a flat image is its own median
    clean = speckle(real)
    assert clean.mean() < 0.01 and (clean < SPECKLED).all()
    noisy = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert speckle(noisy).mean() > SPECKLED
    stats = speckle_stats(torch.cat([real[:10], noisy[:30]]))
    assert stats["speckled"] == pytest.approx(0.75) and stats["speckle"] > clean.mean()


def test_frechet_distance_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 6, generator=g), 0.5 * torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g) + 1
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    cov_a, cov_b = np.cov(a.double().numpy().T), np.cov(b.double().numpy().T)
    reference = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # a shift adds |shift|^2


def test_fid_ranks_real_above_damaged_above_noise(fidelity, real):
    from lib_cfg.evaluation import evaluation_prompts
    _, targets = evaluation_prompts(10)  # 180 real images, every colour x shape ten times
    floor = fidelity.floor(targets)
    skewed = fidelity.floor([{"color": "red", "shape": "circle"}] * 180)  # real images, but one prompt's
    speckled = (real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    noise = torch.rand(300, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    # the floor is small; a random draw of real images (its attribute mix off by chance) a little above it;
    # the same images speckled, further; pure noise and real images of one prompt only, far away
    assert floor < 1.5 and floor < fidelity.fid(real) < 6
    assert fidelity.fid(real) < fidelity.fid(speckled) < 20 < min(skewed, fidelity.fid(noise))
    with pytest.raises(ValueError, match="at least 2"):
        fidelity.fid(real[:1])


def test_real_images_follow_the_targets(fidelity):
    from lib_cfg.evaluation import judge
    targets = [{"color": "magenta", "shape": "triangle"}, {"color": "yellow", "shape": "circle"}] * 3
    verdicts = judge(fidelity.real_images(targets))
    assert [(v["color"], v["shape"]) for v in verdicts] == [(t["color"], t["shape"]) for t in targets]


def test_feature_net_is_trained_once_and_reused(fidelity, data_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the saved features should have been loaded")
    monkeypatch.setattr(fidelity_module, "train_feature_net", no_training)
    again = Fidelity(get_preset("ci", data_dir=data_dir), progress=False)
    x = fidelity.real_images([{"color": "red", "shape": "circle"}] * 4)
    assert torch.equal(again.features(x), fidelity.features(x))


def test_fidelity_refuses_datasets_without_known_attributes():
    with pytest.raises(ValueError, match="synthetic shapes"):
        Fidelity(get_preset("lesson-smoke"))


def test_snr_matches_diffusers():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    t = torch.tensor([0, 10, 500, 999])
    for schedule, name in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        ours = snr(create_noise_schedule(1000, beta_schedule=schedule), t)
        theirs = compute_snr(DDPMScheduler(num_train_timesteps=1000, beta_schedule=name), t)
        assert torch.allclose(ours.float(), theirs.float(), rtol=1e-4)


def test_logit_normal_timesteps_favour_the_middle():
    T, n = 1000, 20000
    uniform = draw_timesteps(n, T, "uniform")
    t = draw_timesteps(n, T, "logit_normal")
    assert t.min() >= 0 and t.max() < T and t.dtype == torch.long
    # t / T = sigmoid(z): its median is T / 2 and a third of the draws land in the middle fifth of [0, T)
    middle = ((t >= 400) & (t < 600)).float().mean()
    assert abs(t.float().median() - T / 2) < 15 and 0.28 < middle < 0.34
    assert abs(((uniform >= 400) & (uniform < 600)).float().mean() - 0.2) < 0.02


def test_min_snr_loss_weights_each_image_by_min_snr_gamma_over_snr():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    from lib_cfg.train import training_step

    class Zero(torch.nn.Module):  # predicts no noise, so the loss is the (weighted) mean of eps^2
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x_t, t, text_embeddings, uncond_mask=None):
            return torch.zeros_like(x_t) + self.bias

    schedule = create_noise_schedule(1000)
    x0, emb = torch.zeros(64, 3, 4, 4), torch.zeros(64, 8)
    losses = {}
    for gamma in (0.0, 5.0):
        config = get_preset("ci", snr_gamma=gamma, mixed_precision="no")
        model = Zero()
        torch.manual_seed(0)
        losses[gamma] = training_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x0, emb,
                                      schedule, config).item()
    torch.manual_seed(0)  # the step's own draws, in its order: timesteps, then noise
    t = draw_timesteps(64, 1000, "uniform")
    eps = torch.randn(64, 3, 4, 4)
    snr_t = compute_snr(DDPMScheduler(num_train_timesteps=1000), t)
    per_image = eps.pow(2).mean(dim=(1, 2, 3))
    assert losses[0.0] == pytest.approx(float(per_image.mean()), rel=1e-5)
    assert losses[5.0] == pytest.approx(float((per_image * snr_t.clamp(max=5.0) / snr_t).mean()), rel=1e-4)
    assert losses[5.0] < losses[0.0]  # low-noise steps (SNR > 5) weigh less
