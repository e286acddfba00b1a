"""The three conditioning modes, the token embeddings they read, and the coloured-background data."""
import pytest
import torch

from lib_cfg.config import get_preset
from lib_cfg.data import load_data
from lib_cfg.evaluation import evaluation_prompts, judge_accuracy
from lib_cfg.model import UNetModel, count_parameters
from lib_cfg.text_encoder import EmbeddingCache


def perturbed(conditioning, **kw):
    torch.manual_seed(0)
    m = UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                  num_heads=2, text_embed_dim=8, conditioning=conditioning, max_text_tokens=5, **kw).eval()
    with torch.no_grad():  # zero-initialised output layers would hide the text
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def text_for(mode, n, g):
    return torch.randn(n, 5, 8, generator=g) if mode == "cross_attention" else torch.randn(n, 8, generator=g)


@pytest.mark.parametrize("mode", ["modulation", "concat", "cross_attention"])
def test_every_mode_reads_the_text_and_swaps_in_its_null(mode):
    m, g = perturbed(mode), torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 3, 8, 8, generator=g), torch.tensor([5, 400, 900])
    a, b = text_for(mode, 3, g), text_for(mode, 3, g)
    with torch.no_grad():
        out = m(x, t, a)
        assert out.shape == x.shape and not torch.allclose(out, m(x, t, b), atol=1e-4)
        mixed = m(x, t, a, uncond_mask=torch.tensor([True, False, True]))
        null = m(x, t, None)
        torch.testing.assert_close(mixed[[0, 2]], null[[0, 2]], rtol=0, atol=1e-5)
        torch.testing.assert_close(mixed[1], out[1], rtol=0, atol=1e-5)


def test_cross_attention_ignores_padding_and_token_order():
    m, g = perturbed("cross_attention"), torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([100, 700])
    tokens = torch.randn(2, 5, 8, generator=g)
    tokens[:, 3:] = 0  # two padding positions
    with torch.no_grad():
        out = m(x, t, tokens)
        shuffled = m(x, t, tokens[:, [2, 0, 1, 3, 4]])  # attention has no positions: order is the encoder's job
        torch.testing.assert_close(out, shuffled, rtol=0, atol=1e-5)
        half = tokens.clone()
        half[:, 2:] = 0  # fewer real tokens: a different caption
        assert not torch.allclose(out, m(x, t, half), atol=1e-4)


def test_modes_differ_in_size_as_expected():
    sizes = {mode: count_parameters(perturbed(mode)) for mode in ("modulation", "concat", "cross_attention")}
    assert sizes["concat"] > sizes["modulation"]  # the mixing MLP
    assert sizes["cross_attention"] != sizes["modulation"]
    with pytest.raises(ValueError, match="conditioning"):
        get_preset("ci", conditioning="film")


def test_token_embeddings_and_their_cache(tmp_path, encoder):
    texts = ["a red circle on a blue background", "a blue circle"]
    tokens = encoder.encode_tokens(texts, 12)
    lengths = [len(ids) for ids in encoder.tokenizer(texts)["input_ids"]]
    assert tokens.shape == (2, 12, 384)
    _, mask = encoder.encode_tokens(texts, 12, with_mask=True)
    for row, n, m in zip(tokens, lengths, mask):
        assert (row[:n].abs().amax(-1) > 0).all() and (row[n:] == 0).all()  # padding is exactly zero
        assert m.sum() == n and torch.equal(m, row.abs().amax(-1) > 0)  # the mask is the non-zero rows
    path = str(tmp_path / "tok.safetensors")
    cache = EmbeddingCache(encoder, path, max_tokens=12)
    torch.testing.assert_close(cache(texts), tokens, rtol=0, atol=1e-5)
    reloaded = EmbeddingCache(path=path, model_name=encoder.model_name, max_tokens=12)
    assert torch.equal(reloaded(texts), cache(texts)) and reloaded._encoder is None
    assert len(EmbeddingCache(path=path, model_name=encoder.model_name).table) == 0  # pooled cache: not these


def test_background_data_and_judge(data_dir):
    config = get_preset("ci", dataset="synthetic-shapes-bg", data_dir=data_dir, synthetic_size=900)
    train, _ = load_data(config, verbose=False)
    x, meta = train[0]
    assert meta["background"] != meta["color"] and meta["background"] in meta["text"]
    acc = judge_accuracy(train, n=800)
    assert acc["color"] >= 0.98 and acc["background"] >= 0.99 and acc["shape"] >= 0.9 and acc["binding"] >= 0.98, acc
    texts, targets = evaluation_prompts(1, backgrounds=True)
    assert len(texts) == 90
    swapped = {(t["background"], t["color"], t["shape"]) for t in targets}
    assert all((t["color"], t["background"], t["shape"]) in swapped for t in targets)  # every twin is there


def test_layout_finds_the_object_and_variety_counts_only_position_and_size():
    from lib_cfg.evaluation import layout, layout_variety

    def square(x0, y0, size, rgb=(1.0, -1.0, -1.0)):
        img = -torch.ones(3, 16, 16)  # black
        img[:, y0:y0 + size, x0:x0 + size] = torch.tensor(rgb)[:, None, None]
        return img

    where = layout(torch.stack([square(2, 4, 4), square(10, 0, 6), -torch.ones(3, 16, 16)]))
    torch.testing.assert_close(where[0], torch.tensor([3.5, 5.5, 4.0]))  # centre x, centre y, sqrt(area)
    torch.testing.assert_close(where[1], torch.tensor([12.5, 2.5, 6.0]))
    assert where[2].isnan().all()  # nothing drawn: no position
    # Same place and size, different colours: no layout variety (colour is not what it measures).
    same = torch.stack([square(5, 5, 4, (1.0, -1.0, -1.0)), square(5, 5, 4, (-1.0, -1.0, 1.0))])
    assert layout_variety(same, [0, 0]) == 0.0
    moved = torch.stack([square(0, 0, 4), square(8, 8, 4), square(3, 3, 5), square(3, 3, 5)])
    # Group 0 moves by 8 px in x and in y (sample std 8 / sqrt(2) each, size std 0); group 1 does not move.
    assert layout_variety(moved, [0, 0, 1, 1]) == pytest.approx((2 * 8 / 2 ** 0.5 / 3 + 0) / 2, rel=1e-5)
