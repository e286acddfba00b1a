"""The offline text encoder and the embedding cache (the network is blocked in conftest)."""
import os
import socket

import pytest
import torch

from lib_cfg.text_encoder import EmbeddingCache, TextEncoder


def test_offline_encoder_loads_without_network_and_embeds(encoder):
    with pytest.raises(OSError):  # the guard is really on
        socket.create_connection(("huggingface.co", 443), timeout=1)
    e = encoder(["a red circle on a black background", "a blue square on a black background"])
    assert e.shape == (2, 384) and encoder.text_embed_dim == 384 and torch.isfinite(e).all()
    assert not any(p.requires_grad for p in encoder.parameters())  # frozen
    same = encoder("a red circle on a black background")
    torch.testing.assert_close(same[0], e[0], rtol=1e-4, atol=1e-5)  # padding does not change the mean pool


def test_colour_and_shape_words_are_separated(encoder):
    e = torch.nn.functional.normalize(encoder(["a red circle", "a red circle", "a blue circle", "a red square"]), dim=-1)
    sim = e @ e.T
    assert sim[0, 1] > 0.999 and sim[0, 2] < 0.99 and sim[0, 3] < 0.99


def test_cache_encodes_each_caption_once_and_persists(encoder, tmp_path):
    calls = []

    class Counting:
        model_name, text_embed_dim = encoder.model_name, encoder.text_embed_dim

        def __call__(self, texts):
            calls.append(list(texts))
            return encoder(texts)

    path = str(tmp_path / "cache.safetensors")
    cache = EmbeddingCache(Counting(), path)
    a = cache(["a red circle", "a blue square", "a red circle"])
    assert calls == [["a red circle", "a blue square"]]  # distinct captions, once
    b = cache(["a blue square", "a red circle"])
    assert len(calls) == 1 and cache.hits == 3 and cache.misses == 2
    assert torch.equal(a[1], b[0]) and torch.equal(a[0], a[2])
    assert os.path.exists(path)
    reloaded = EmbeddingCache(Counting(), path)
    assert torch.equal(reloaded(["a red circle"])[0], a[0]) and len(calls) == 1  # read from disk, not re-encoded


def test_cache_of_another_encoder_is_ignored(encoder, tmp_path):
    path = str(tmp_path / "cache.safetensors")
    EmbeddingCache(encoder, path)(["a red circle"])

    class Other:
        model_name, text_embed_dim = "another-encoder", 384

        def __call__(self, texts):
            return torch.zeros(len(texts), 384)

    assert EmbeddingCache(Other(), path)(["a red circle"]).abs().sum() == 0


def test_unreachable_clip_names_the_offline_encoder():
    with pytest.raises(OSError, match="all-MiniLM-L6-v2"):
        TextEncoder("openai/clip-vit-large-patch14", "cpu")


def test_empty_long_and_non_ascii_prompts(encoder):
    with pytest.warns(UserWarning, match="truncated"):
        e = encoder(["", "ein rotes Quadrat über 東京 🚀", "red " * 600])
    assert e.shape == (3, 384) and torch.isfinite(e).all()


def test_a_complete_cache_needs_no_encoder(tmp_path, encoder):
    path = str(tmp_path / "cache.safetensors")
    EmbeddingCache(encoder, path).warm(["a red circle", "a blue square"])
    lazy = EmbeddingCache(path=path, model_name=encoder.model_name)
    assert lazy.text_embed_dim == 384
    assert torch.allclose(lazy(["a blue square"]), encoder(["a blue square"]), atol=1e-5)  # batch of 2 vs 1
    assert lazy._encoder is None  # answered from the file alone
    lazy(["a green triangle"])  # a miss loads the encoder
    assert lazy._encoder is not None and lazy.misses == 1
