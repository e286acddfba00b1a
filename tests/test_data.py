"""load_data from its three sources: synthetic, a hub-style dataset (saved locally), an image folder."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib_cfg.config import get_preset
from lib_cfg.data import all_captions, load_data, to_tensor
from lib_cfg.synthetic import COLORS, SHAPES, generate


def check_item(item, resolution):
    x, meta = item
    assert x.shape == (3, resolution, resolution) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert isinstance(meta["text"], str)


def test_synthetic_is_deterministic_cached_and_captioned(data_dir):
    config = get_preset("ci", data_dir=data_dir, synthetic_size=600)
    train, val = load_data(config, verbose=False)
    assert len(train) + len(val) == 600 and len(val) == 30
    x, meta = train[0]
    check_item(train[0], config.resolution)
    assert meta["color"] in meta["text"] and meta["shape"] in meta["text"]
    assert os.path.exists(os.path.join(data_dir, "synthetic-shapes_v1_n600_r16_s0.safetensors"))
    again, _ = load_data(config, verbose=False)  # from the cache
    assert torch.equal(again.images, train.images) and again.captions == train.captions
    images, colors, shapes, _, backgrounds = generate(600, 16, seed=0)
    assert (backgrounds == -1).all()  # black backgrounds unless asked for colours
    assert torch.equal(images, generate(600, 16, seed=0)[0])
    assert not torch.equal(images, generate(600, 16, seed=1)[0])
    # every colour and shape occurs
    assert set(colors.tolist()) == set(range(len(COLORS))) and set(shapes.tolist()) == set(range(len(SHAPES)))


def odd_images():
    """Grayscale, RGBA, palette and odd-sized images."""
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    palette = Image.new("RGB", (17, 23), (0, 0, 255)).convert("P")
    return [Image.new("L", (20, 20), 128), rgba, palette, Image.new("RGB", (64, 48), (0, 255, 0)),
            Image.new("RGB", (5, 9), (255, 255, 0))]


@pytest.mark.parametrize("image", odd_images(), ids=["L", "RGBA", "P", "RGB-big", "RGB-tiny"])
def test_any_image_mode_and_size_becomes_3xRxR(image):
    x = to_tensor(image, 16)
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1


def make_imagefolder(root, metadata="jsonl", caption_column="caption"):
    os.makedirs(root, exist_ok=True)
    rows = []
    for i, img in enumerate(odd_images()):
        name = f"img_{i}.png"
        img.save(os.path.join(root, name))
        rows.append({"file_name": name, caption_column: f"picture number {i}"})
    if metadata == "jsonl":
        with open(os.path.join(root, "metadata.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        with open(os.path.join(root, "metadata.csv"), "w") as f:
            f.write(f"file_name,{caption_column}\n" + "".join(f"{r['file_name']},{r[caption_column]}\n" for r in rows))
    return root


@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_local_imagefolder(tmp_path, metadata):
    root = make_imagefolder(str(tmp_path / "folder"), metadata)
    config = get_preset("ci", dataset=root, caption_column="caption", resolution=8, val_fraction=0.2)
    train, val = load_data(config, verbose=False)
    assert len(train) + len(val) == 5
    for item in list(train) + list(val):
        check_item(item, 8)
    assert sorted(all_captions(train) + all_captions(val)) == [f"picture number {i}" for i in range(5)]


def test_missing_caption_column_lists_the_columns(tmp_path):
    root = make_imagefolder(str(tmp_path / "folder"), "jsonl", caption_column="description")
    config = get_preset("ci", dataset=root, caption_column="caption")
    with pytest.raises(ValueError, match=r"no caption column 'caption'.*'description'"):
        load_data(config, verbose=False)


def hub_style_dataset():
    import datasets

    images = [Image.fromarray(np.full((24, 24, 3), 40 * i, dtype=np.uint8)) for i in range(6)]
    return datasets.Dataset.from_dict(
        {"image": images, "caption_blip2-opt-2.7b": [f"a cat number {i}" for i in range(6)], "label": list(range(6))},
        features=datasets.Features({"image": datasets.Image(), "caption_blip2-opt-2.7b": datasets.Value("string"),
                                    "label": datasets.Value("int64")}))


def test_hub_dataset_loaded_from_a_local_copy(tmp_path):
    """The lesson's AFHQ layout (image + caption_blip2-opt-2.7b + label), through datasets.load_dataset,
    the same call that reads the hub, pointed at a local parquet copy of the repository."""
    repo = tmp_path / "afhq_copy"
    (repo / "data").mkdir(parents=True)
    hub_style_dataset().to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    config = get_preset("ci", dataset=str(repo), caption_column="caption_blip2-opt-2.7b", resolution=8,
                        val_fraction=0.2)
    train, val = load_data(config, verbose=False)
    assert len(train) + len(val) == 6
    x, meta = train[0]
    check_item(train[0], 8)
    assert meta["text"].startswith("a cat number") and "label" in meta


def test_dataset_saved_with_save_to_disk(tmp_path):
    hub_style_dataset().save_to_disk(str(tmp_path / "saved"))
    config = get_preset("ci", dataset=str(tmp_path / "saved"), caption_column="caption_blip2-opt-2.7b", resolution=8)
    train, val = load_data(config, verbose=False)
    assert len(train) + len(val) == 6


def test_unreachable_hub_dataset_is_a_clear_error():
    config = get_preset("ci", dataset="reese-green/afhq64_captions_64k", caption_column="caption_blip2-opt-2.7b")
    with pytest.raises(RuntimeError, match="synthetic-shapes"):
        load_data(config, verbose=False)


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(get_preset("ci", dataset="./no/such/folder"), verbose=False)


def test_missing_image_column_lists_the_columns(tmp_path):
    hub_style_dataset().rename_column("image", "picture").save_to_disk(str(tmp_path / "saved"))
    config = get_preset("ci", dataset=str(tmp_path / "saved"), caption_column="caption_blip2-opt-2.7b")
    with pytest.raises(ValueError, match=r"no image column 'image'.*'picture'.*--image_column"):
        load_data(config, verbose=False)


def test_folder_without_metadata_or_data_files_says_what_it_needs(tmp_path):
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        load_data(get_preset("ci", dataset=str(tmp_path / "bare")), verbose=False)
