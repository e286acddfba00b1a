"""The UNet: text conditioning (null swap, the dropout rate training draws, caller's tensor untouched), attention, sizes."""
import pytest
import torch
import torch.nn.functional as F

from lib_cfg.config import get_preset
from lib_cfg.diffusion import noise_schedule_for
from lib_cfg.model import UNetModel, count_parameters, create_unet_model
from lib_cfg.train import make_optimizer, training_step


def small_model(**kw):
    torch.manual_seed(0)
    return UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                     num_heads=2, text_embed_dim=8, **kw)


def test_output_shape_and_text_dependence():
    m = small_model()
    with torch.no_grad():  # the output layer starts at zero; perturb it so outputs carry the text
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 999])
    out = m(x, t, torch.randn(4, 8))
    assert out.shape == x.shape
    assert not torch.allclose(out, m(x, t, torch.randn(4, 8)))


@pytest.mark.parametrize("text_drop_prob", [0.2, 0.5])
def test_training_step_swaps_in_null_at_text_drop_prob_and_leaves_input_untouched(text_drop_prob):
    # The path training really uses: training_step draws the mask, forward swaps the rows.
    m = small_model().train()
    seen = []
    m.text_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    config = get_preset("ci", device="cpu", text_drop_prob=text_drop_prob, mixed_precision="no")
    te = torch.randn(4000, 8) + 3.0  # far from the null embedding, so a swapped row is unmistakable
    before = te.clone()
    torch.manual_seed(1)
    training_step(m, make_optimizer(m, config), torch.zeros(4000, 3, 4, 4), te,
                  noise_schedule_for(config), config)
    swapped = torch.all(seen[0] == m.null_text_embed.detach(), dim=1)
    assert abs(swapped.float().mean().item() - text_drop_prob) < 0.025  # 4000 draws: std <= 0.008
    assert torch.equal(te, before), "the caller's embeddings must not be modified"
    assert torch.equal(seen[0][~swapped], te[~swapped])


def test_forward_swaps_only_the_rows_asked_for():
    m = small_model().eval()
    seen = []
    m.text_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    te = torch.randn(64, 8)
    x, t = torch.zeros(64, 3, 4, 4), torch.zeros(64, dtype=torch.long)
    m(x, t, te)
    assert torch.equal(seen[-1], te)  # no mask: every caption as given
    mask = torch.arange(64) % 2 == 0
    m(x, t, te, uncond_mask=mask)
    assert torch.equal(seen[-1][mask], m.null_text_embed.detach().expand(32, -1))
    assert torch.equal(seen[-1][~mask], te[~mask])
    m(x, t, None)
    assert torch.equal(seen[-1], m.null_text_embed.detach().expand(64, -1))


def test_null_embedding_is_learned():
    m = small_model().train()
    with torch.no_grad():  # zero-initialised residual outputs would block every gradient to emb at init
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = m(torch.randn(8, 3, 4, 4), torch.zeros(8, dtype=torch.long), torch.randn(8, 8),
            uncond_mask=torch.ones(8, dtype=torch.bool))
    out.pow(2).mean().backward()
    assert m.null_text_embed.grad is not None and m.null_text_embed.grad.abs().sum() > 0


def test_lesson_preset_is_about_14_7M_parameters():
    model = create_unet_model(get_preset("lesson", device="cpu"), text_embed_dim=768, verbose=False)
    assert abs(count_parameters(model) / 1e6 - 14.7) < 0.3


def test_create_unet_model_reports_its_own_parameter_count(capsys):
    model = create_unet_model(get_preset("ci", device="cpu"))
    printed = float(capsys.readouterr().out.split("model params:")[1].split("M")[0])
    assert printed == round(count_parameters(model) / 1e6, 2) and printed > 0.1


def test_device_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        create_unet_model(get_preset("ci", device="cuda"))


def test_attention_kernels_agree_with_sdpa_with_and_without_mask():
    # The plain-matmul kernel (CPU, bf16) must be the same function as SDPA's; `attention` picks by dtype.
    from lib_cfg.model import attention, attention_matmul

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 8, 16), torch.randn(2, 4, 8, 5), torch.randn(2, 4, 8, 5)
    q = q[0]  # a strided view, as the qkv convolution's output is
    mask = torch.tensor([[True, True, False, True, False], [False, False, False, False, True]])[:, None, None, :]
    for m in (None, mask):
        ref = F.scaled_dot_product_attention(*(t.transpose(-1, -2) for t in (q, k, v)), attn_mask=m)
        ref = ref.transpose(-1, -2)
        torch.testing.assert_close(attention_matmul(q, k, v, m), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attention(q, k, v, m), ref, rtol=1e-5, atol=1e-5)
        low = attention(*(t.bfloat16() for t in (q, k, v)), m)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)
    # a masked key gets no weight at all: changing its value changes nothing
    v2 = v.clone()
    v2[0, ..., 2] = 100.0
    torch.testing.assert_close(attention_matmul(q, k, v2, mask), attention_matmul(q, k, v, mask))


@pytest.mark.parametrize("channels,size", [(4, 1), (8, 5), (16, 8)])
def test_upsample_equals_nearest_doubling_then_conv(channels, size):
    from lib_cfg.model import Upsample

    torch.manual_seed(0)
    up = Upsample(channels).double()
    x = torch.randn(2, channels, size, size, dtype=torch.float64, requires_grad=True)
    reference = up.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    out = up(x)
    assert out.shape == (2, channels, 2 * size, 2 * size)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    g = torch.randn_like(out)  # and the same gradients for the input and the 3x3 weights
    grads = torch.autograd.grad(out, (x, up.conv.weight, up.conv.bias), g)
    grads_ref = torch.autograd.grad(reference, (x, up.conv.weight, up.conv.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
