"""Training images on Ray Data: each worker's stream decodes its images, augments them and turns them into the image
tower's input, and samples one of each image's captions, in Ray Data tasks beside the training workers (never in the
driver). Every pass over the data (an epoch) runs the map again: new crops and new captions each epoch.

Augmentation (``image_text.augment``): a random crop of 70–100 % of the picture's area with its aspect ratio within
3/4–4/3 (the random-resized crop of Szegedy et al. 2015, milder: stamps and emoji fill their frame), then the
processor resizes it. No flips: flags and writing would read wrong.
"""
from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

MIN_AREA, MAX_ASPECT = 0.7, 4 / 3


def random_crop(image, rng: random.Random):
    """A random crop of 70–100 % of ``image``'s area, aspect ratio within 3/4–4/3 (the whole image when no such crop
    fits in ten tries)."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(MIN_AREA, 1.0)
        aspect = math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.crop((left, top, left + w, top + h))
    return image


def decode_batch(batch: dict[str, Any], vision: str, image_size: int, augment: bool, max_bytes: int,
                 max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: image bytes → ``pixels`` (n, 3, H, W float32), one ``caption`` sampled per
    image, ``concept`` kept. The rows were checked by the loader (fastemb/data/images.py), so each decodes."""
    from fastemb.data.images import decode_image
    from fastemb.model.image_tower import image_processor, pixel_values

    rng = random.Random()  # a new draw every epoch: the map runs again on each pass
    images = [decode_image(bytes(b), max_bytes=max_bytes, max_pixels=max_pixels) for b in batch["image"]]
    if augment:
        images = [random_crop(im, rng) for im in images]
    return {"pixels": pixel_values(image_processor(vision, image_size), images),
            "caption": np.array([rng.choice(list(c)) for c in batch["captions"]], dtype=object),
            "concept": np.asarray(batch["concept"], dtype=object)}


def image_dataset(rows: list[dict], spec) -> Any:
    """A Ray Dataset of a job's image rows that decodes, augments and samples captions as it streams."""
    import pyarrow as pa
    import ray.data

    it = spec.image_text
    table = pa.Table.from_pylist([{"image": r["image"], "captions": list(r["captions"]), "concept": r["concept"]}
                                  for r in rows])
    return ray.data.from_arrow(table).map_batches(
        decode_batch, batch_size=64, batch_format="numpy", num_cpus=it.decode_cpus,
        fn_kwargs={"vision": it.vision, "image_size": it.image_size, "augment": it.augment,
                   "max_bytes": it.max_image_bytes, "max_pixels": it.max_pixels})
