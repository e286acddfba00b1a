"""The denoiser: a guided-diffusion style UNet with text conditioning.

Three ways in for the text (`conditioning`), as the lesson lists them:
- "modulation" (the lesson's, the default): the pooled text embedding is projected (`text_proj`)
  and *added to the time embedding*; every ResBlock then sees `emb` (time + text) and uses it
  to scale and shift its normalised features;
- "concat": the projected text is concatenated to the time embedding and an MLP mixes the two,
  so `emb` can be any function of (time, text), not only a sum; it still reaches every ResBlock
  (concatenating to the input image instead would condition the first convolution only);
- "cross_attention": the UNet features at the attention resolutions are queries over the text
  encoder's *token* embeddings [N x L x D] (all-zero rows are padding), so each position can
  look up the words it needs: the only mode that can tell "a red circle on blue" from "a blue
  circle on red", whose pooled embeddings are nearly equal.
A learnable `null_text_embed` ([1 x D], or a null token sequence [1 x L x D]) stands for "no
caption": `forward` swaps it in for the rows marked in `uncond_mask` (all rows when
`text_embeddings=None`). In training those rows are drawn with probability `text_drop_prob` (the lesson's
`p_uncond`: classifier-free dropout); in CFG sampling they are the unconditional half of the batch."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import resolve_device


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps. t: [N] -> [N x dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm(channels: int) -> nn.GroupNorm:
    # Up to 32 groups of at least 4 channels (groups of 1 channel normalise away too much), dividing evenly.
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def zero_init(module: nn.Module) -> nn.Module:
    # Output layers start at zero so every residual block starts as the identity.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Two 3x3 convs; `emb` [N x E] scales and shifts the second GroupNorm (FiLM)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_norm = norm(out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions of a [N x C x H x W] feature map; with `context_dim`, then
    cross-attention from those positions to text tokens [N x L x context_dim]."""

    def __init__(self, channels: int, num_heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))
        if context_dim:
            self.cross_norm = norm(channels)
            self.cross_q = nn.Conv2d(channels, channels, 1)
            self.cross_kv = nn.Linear(context_dim, 2 * channels)
            self.cross_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, h, w = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, d, h * w).unbind(1)  # [N x heads x d x HW]
        x = x + self.proj_out(attention(q, k, v).reshape(n, c, h, w))
        if context is None or not hasattr(self, "cross_q"):
            return x
        q = self.cross_q(self.cross_norm(x)).reshape(n, self.num_heads, d, h * w)
        k, v = self.cross_kv(context.to(x.dtype)).reshape(n, -1, 2, self.num_heads, d).permute(2, 0, 3, 4, 1)
        keep = context.abs().amax(-1) > 0  # [N x L]: padding tokens are all-zero rows
        keep = keep | ~keep.any(-1, keepdim=True)  # (a row with no token at all attends to everything)
        return x + self.cross_out(attention(q, k, v, keep[:, None, None, :]).reshape(n, c, h, w))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each query position's weighted mean of the values, weights softmax(q . k / sqrt(d)) over the key positions.

    Channels-first, the layout the 1x1 convolutions produce: q [N x heads x d x Tq], k and v [N x heads x d x Tk],
    mask (optional) [N x 1 x 1 x Tk] bool, True where a key may be attended to. Returns [N x heads x d x Tq].
    Which kernel, as measured here (one block's forward and backward, 128 channels, 4 heads, at 16 / 64 / 256
    positions): on a CPU in bf16, two plain matmuls (3.9 / 10.7 / 23.5 ms; SDPA's math kernel 7.4 / 22 / 50,
    its flash kernel slower still); in fp32 and on GPUs, SDPA's fused kernels (fp32 CPU at 256: 30 vs 53 ms).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return attention_matmul(q, k, v, mask)
    q, k, v = (t.transpose(-1, -2).contiguous() for t in (q, k, v))  # [N x heads x T x d]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(-1, -2)


def attention_matmul(q, k, v, mask=None):
    """`attention` as two matmuls on the channels-first views (no transposed copies)."""
    weights = torch.matmul(q.transpose(-1, -2) * q.shape[-2] ** -0.5, k)  # [N x heads x Tq x Tk]
    if mask is not None:
        weights = weights.masked_fill(~mask, float("-inf"))
    return torch.matmul(v, weights.softmax(-1).transpose(-1, -2))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.op(x)


class Upsample(nn.Module):
    """[N x C x H x W] -> [N x C x 2H x 2W]: nearest-neighbour doubling, then the 3x3 conv `self.conv`, i.e.
    `self.conv(F.interpolate(x, scale_factor=2))`, computed as one stride-2 transposed convolution.

    Why that is the same function: in the doubled map every 2x2 block repeats one input pixel, so the 3x3
    window of any output pixel covers only 2x2 distinct input pixels. Each input pixel therefore reaches a 4x4
    patch of outputs, weighted by `kernel_4x4()`: the 3x3 kernel summed at the four shifts of a 2x2 block.
    16 instead of 36 multiply-adds per input pixel and channel pair, and the 4x larger doubled map is never
    built (measured here: training steps 3-5% faster in fp32, about 1% in bf16). The parameters stay those
    of the 3x3 conv.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def kernel_4x4(self) -> torch.Tensor:
        """[C_out x C_in x 4 x 4]: k4[i, j] = sum of k3[i - a, j - b] over a, b in {0, 1} (k3 zero outside 3x3)."""
        k = F.pad(self.conv.weight, (1, 1, 1, 1))
        return k[..., 1:, 1:] + k[..., 1:, :-1] + k[..., :-1, 1:] + k[..., :-1, :-1]

    def forward(self, x, emb=None):
        # conv_transpose2d scatters each input pixel with the kernel flipped, and wants it as [C_in x C_out x 4 x 4].
        weight = self.kernel_4x4().flip(-2, -1).transpose(0, 1)
        return F.conv_transpose2d(x, weight, self.conv.bias, stride=2, padding=1)


class EmbedSequential(nn.Sequential):
    """A sequence of layers that all receive `emb` (those that ignore it take it anyway); attention
    blocks also get the text tokens (`context`, None unless conditioning is cross-attention)."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, AttentionBlock):
                x = layer(x, emb, context)
            elif isinstance(layer, (ResBlock, Downsample, Upsample)):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


CONDITIONING = ("modulation", "concat", "cross_attention")


class UNetModel(nn.Module):
    def __init__(self, in_channels: int = 3, model_channels: int = 64, out_channels: int = 3,
                 num_res_blocks: int = 2, attention_resolutions=(4,), channel_mult=(1, 2, 2),
                 num_heads: int = 4, dropout: float = 0.0, text_embed_dim: int = 384, resolution: int = 16,
                 conditioning: str = "modulation", max_text_tokens: int = 16):
        super().__init__()
        if conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONING}")
        self.resolution = resolution  # the image size it was trained on (convs accept any; sampling needs one)
        self.model_channels = model_channels
        self.text_embed_dim = text_embed_dim
        self.conditioning = conditioning
        time_embed_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        context_dim = self.add_text_conditioning(text_embed_dim, time_embed_dim, max_text_tokens)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_embed_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads, context_dim))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, time_embed_dim, ch, dropout), AttentionBlock(ch, num_heads, context_dim),
                                            ResBlock(ch, time_embed_dim, ch, dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), time_embed_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads, context_dim))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def add_text_conditioning(self, text_embed_dim: int, time_embed_dim: int, max_text_tokens: int):
        """The lesson's change to `__init__`: the layers that bring the caption in, and the learned null
        embedding that stands for "no caption". Returns the context width the attention blocks need
        (the text width for cross-attention, None otherwise)."""
        if self.conditioning == "cross_attention":  # the tokens go to the attention blocks, not into emb
            # "No caption" is a learned token sequence (all positions used).
            self.null_text_embed = nn.Parameter(torch.randn(1, max_text_tokens, text_embed_dim) * 0.02)
            return text_embed_dim
        # Linear modulation: text -> the same space as the time embedding, then added to it.
        self.text_proj = nn.Sequential(nn.Linear(text_embed_dim, time_embed_dim), nn.SiLU(),
                                       nn.Linear(time_embed_dim, time_embed_dim))
        if self.conditioning == "concat":  # [time, text] -> emb: an MLP, so not only a sum of the two
            self.cond_mix = nn.Sequential(nn.Linear(2 * time_embed_dim, time_embed_dim), nn.SiLU(),
                                          nn.Linear(time_embed_dim, time_embed_dim))
        # "No caption" is a learned vector, so the model learns what unconditional means.
        self.null_text_embed = nn.Parameter(torch.randn(1, text_embed_dim) * 0.02)
        return None

    def swap_in_null(self, text_embeddings: Optional[torch.Tensor], n: int,
                     uncond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The caption embeddings with the rows in `uncond_mask` replaced by the learned null embedding.

        text_embeddings: [N x D] ([N x L x D] tokens for cross-attention), or None: every row null;
        uncond_mask: [N] bool, the rows that get "no caption": in training the classifier-free dropout
        (drawn by `train.training_step`), in CFG sampling the unconditional half of the batch.
        """
        null = self.null_text_embed.expand(n, *self.null_text_embed.shape[1:])
        if text_embeddings is None:
            return null
        if uncond_mask is None:
            return text_embeddings
        # torch.where builds a new tensor: the caller's (cached) embeddings are never modified.
        uncond_mask = uncond_mask.reshape(n, *([1] * (null.dim() - 1)))
        return torch.where(uncond_mask, null.to(text_embeddings.dtype), text_embeddings)

    def condition(self, t: torch.Tensor, text_embeddings: torch.Tensor, dtype: torch.dtype):
        """t [N] and the (swapped) caption embeddings -> (emb [N x E], context).

        emb (time, and for modulation / concat the text) reaches every ResBlock; context, the token
        embeddings [N x L x D], reaches the attention blocks (cross-attention only, else None)."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype))
        text_embeddings = text_embeddings.to(dtype)
        if self.conditioning == "modulation":
            return emb + self.text_proj(text_embeddings), None  # add the text embedding to the time embedding
        if self.conditioning == "concat":
            return self.cond_mix(torch.cat([emb, self.text_proj(text_embeddings)], dim=-1)), None
        return emb, text_embeddings  # cross-attention: the tokens are read by the attention blocks

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None,
                uncond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict the noise in `x`.

        x: [N x C x H x W] noisy images x_t; t: [N] integer timesteps; text_embeddings and uncond_mask:
        see `swap_in_null` (None: all rows unconditional). Returns eps: [N x C x H x W].
        """
        text_embeddings = self.swap_in_null(text_embeddings, x.shape[0], uncond_mask)
        emb, context = self.condition(t, text_embeddings, x.dtype)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


def create_unet_model(config, device: Optional[str] = None, text_embed_dim: int = 384,
                      verbose: bool = True) -> UNetModel:
    """The UNet described by `config` on `device` (default: the config's, resolved)."""
    device = resolve_device(device or config.device)  # fail on an unavailable device before building anything
    model = UNetModel(model_channels=config.model_channels, num_res_blocks=config.num_res_blocks,
                      attention_resolutions=config.attention_resolutions, channel_mult=config.channel_mult,
                      num_heads=config.num_heads, dropout=config.dropout, text_embed_dim=text_embed_dim,
                      resolution=config.resolution, conditioning=config.conditioning,
                      max_text_tokens=config.max_text_tokens)
    if verbose:
        print(f"model params: {count_parameters(model) / 1e6:.2f} M")
    return model.to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
