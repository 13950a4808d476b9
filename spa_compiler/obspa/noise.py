"""Data-free inputs for statistics: white noise, or 1/f² noise for image-shaped inputs.

Natural images have a power spectrum falling roughly as 1/f²: neighbouring
pixels are strongly correlated.  White noise has none of that structure, so
a network's first layers see inputs unlike anything they were trained on and
the second moments OBSPA estimates from them are off.  ``auto`` gives every
float input of rank 4 with spatial sides of at least ``MIN_SIDE`` (an image
batch, NCHW) 1/f² noise, standardized to zero mean and unit variance per
sample and channel, and every other input what :func:`verify.random_inputs`
gives (N(0,1) floats, small random ids).
"""
from __future__ import annotations

import numpy as np

NOISE_KINDS = ("auto", "white")
MIN_SIDE = 4


def pink_images(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """NCHW noise with power spectrum ~ 1/f² (amplitude ~ 1/f), unit variance per sample and channel."""
    n, c, h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0  # the DC term is removed by the standardization below anyway
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) / f
    x = np.fft.irfft2(spectrum, s=(h, w))
    x -= x.mean(axis=(2, 3), keepdims=True)
    x /= x.std(axis=(2, 3), keepdims=True) + 1e-12
    return x


def is_image(shape: list[int], dtype) -> bool:
    return np.issubdtype(dtype, np.floating) and len(shape) == 4 and min(shape[2:]) >= MIN_SIDE


def noise_inputs(sess, batch: int, seed: int, kind: str = "auto") -> dict[str, np.ndarray]:
    """Seeded feeds for every input of *sess*: 1/f² noise for images under ``auto``, else white noise."""
    from ..runtime import random_inputs

    feeds = random_inputs(sess, batch=batch, seed=seed)
    if kind == "white":
        return feeds
    rng = np.random.default_rng(seed + 7919)
    for name, value in feeds.items():
        if is_image(list(value.shape), value.dtype):
            feeds[name] = pink_images(value.shape, rng).astype(value.dtype)
    return feeds
