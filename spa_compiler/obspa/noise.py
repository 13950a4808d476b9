"""Data-free inputs for statistics: white noise, or 1/f² noise for image-shaped inputs.

Natural images have a power spectrum falling roughly as 1/f²: neighbouring
pixels are strongly correlated.  White noise has none of that structure, so
a network's first layers see inputs unlike anything they were trained on and
the second moments OBSPA estimates from them are off.  ``auto`` gives every
float input of rank 4 with spatial sides of at least ``MIN_SIDE`` (an image
batch, NCHW or NHWC) and every (batch, time, features) input of at least
``MIN_SPECTROGRAM_SIDE`` frames and features 1/f² noise, standardized to
zero mean and unit variance per sample and channel, and every other float
input N(0,1).  Token ids are drawn within the table they index and masks
are padded ones (:mod:`.input_kinds` reads both from the graph), whatever
the noise kind.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

NOISE_KINDS = ("auto", "white")
MIN_SIDE = 4
MIN_SPECTROGRAM_SIDE = 16


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


def is_image_nhwc(shape: list[int], dtype) -> bool:
    """Channels-last images (TF/Keras exports): 1, 3 or 4 channels last, spatial sides before them."""
    return np.issubdtype(dtype, np.floating) and len(shape) == 4 and shape[3] in (1, 3, 4) \
        and shape[1] not in (1, 3, 4) and min(shape[1:3]) >= MIN_SIDE


def is_spectrogram(shape: list[int], dtype) -> bool:
    """(batch, time, features) float sequences long and wide enough to be frames of a spectrogram."""
    return np.issubdtype(dtype, np.floating) and len(shape) == 3 and min(shape[1:]) >= MIN_SPECTROGRAM_SIDE


def padded_masks(shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    """Attention-mask-like inputs: ones, each row's tail (up to half of it) zero as padding."""
    mask = np.ones(shape, dtype=np.int64)
    if len(shape) >= 1 and shape[-1] > 1:
        flat = mask.reshape(-1, shape[-1])
        for row, pad in zip(flat, rng.integers(0, shape[-1] // 2 + 1, len(flat))):
            row[shape[-1] - pad:] = 0
    return mask.astype(dtype)


def noise_inputs(sess, batch: int, seed: int, kind: str = "auto", kinds=None,
                 dims: Optional[dict[str, int]] = None) -> dict[str, np.ndarray]:
    """Seeded feeds for every input of *sess* that look like real ones where the graph says how.

    *kinds* (:func:`.input_kinds.input_kinds`): ids are drawn within the table they index, masks
    are ones with padded tails; *dims* sizes symbolic dimensions (sequence lengths).  Under ``auto``
    float images (NCHW or NHWC) and spectrograms get 1/f² noise; ``white`` leaves floats N(0,1).
    """
    from ..runtime import random_inputs

    feeds = random_inputs(sess, batch=batch, seed=seed, dims=dims)
    rng = np.random.default_rng(seed + 7919)
    for name, value in feeds.items():
        what = (kinds or {}).get(name)
        if what is not None and what.kind == "ids":
            feeds[name] = rng.integers(0, what.high, size=value.shape).astype(value.dtype)
        elif what is not None and what.kind == "mask":
            feeds[name] = padded_masks(value.shape, value.dtype, rng)
        elif kind == "white":
            continue
        elif is_image(list(value.shape), value.dtype):
            feeds[name] = pink_images(value.shape, rng).astype(value.dtype)
        elif is_image_nhwc(list(value.shape), value.dtype):
            feeds[name] = pink_images(value.transpose(0, 3, 1, 2).shape, rng).transpose(0, 2, 3, 1).astype(value.dtype)
        elif is_spectrogram(list(value.shape), value.dtype):
            feeds[name] = pink_images(value.shape[:1] + (1,) + value.shape[1:], rng)[:, 0].astype(value.dtype)
    return feeds
