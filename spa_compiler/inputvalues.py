"""How data-free values are drawn for each kind of input (see :mod:`.inputfacts` for the kinds).

Natural images have a power spectrum falling roughly as 1/f²: neighbouring
pixels are strongly correlated.  White noise has none of that structure, so
a network's first layers see inputs unlike anything they were trained on and
the second moments OBSPA estimates from them are off.  Under ``auto`` every
float input of rank 4 with spatial sides of at least ``MIN_SIDE`` (an image
batch, NCHW or NHWC) and every (batch, time, features) input of at least
``MIN_SPECTROGRAM_SIDE`` frames and features gets 1/f² noise, standardized to
zero mean and unit variance per sample and channel, and every other float
input N(0,1); ``white`` keeps every float N(0,1).  Whatever the noise kind,
ids are drawn within the table they index (each as often as its embedding row
says: :func:`inputfacts.row_weights`), masks are padded ones, other
integers lie in ``[0, high)`` and bools are fair coins.
"""
from __future__ import annotations

import numpy as np

from .inputfacts import BOOL, IDS, MASK

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


def is_image(shape, dtype) -> bool:
    return np.issubdtype(dtype, np.floating) and len(shape) == 4 and min(shape[2:]) >= MIN_SIDE


def is_image_nhwc(shape, dtype) -> bool:
    """Channels-last images (TF/Keras exports): 1, 3 or 4 channels last, spatial sides before them."""
    return np.issubdtype(dtype, np.floating) and len(shape) == 4 and shape[3] in (1, 3, 4) \
        and shape[1] not in (1, 3, 4) and min(shape[1:3]) >= MIN_SIDE


def is_spectrogram(shape, dtype) -> bool:
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


def floats(shape: tuple[int, ...], dtype, rng: np.random.Generator, noise: str = "auto") -> np.ndarray:
    """Unit-variance float noise: 1/f² for images and spectrograms under ``auto``, else N(0,1)."""
    if noise == "auto":
        if is_image(shape, dtype):
            return pink_images(shape, rng).astype(dtype)
        if is_image_nhwc(shape, dtype):
            return pink_images((shape[0], shape[3], shape[1], shape[2]), rng).transpose(0, 2, 3, 1).astype(dtype)
        if is_spectrogram(shape, dtype):
            return pink_images((shape[0], 1) + tuple(shape[1:]), rng)[:, 0].astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def draw(kind: str, shape: tuple[int, ...], dtype, high: int, rng: np.random.Generator,
         noise: str = "auto", weights=None) -> np.ndarray:
    """Seeded values of one input of *kind* (``high``: exclusive bound of ids and other integers;
    *weights*: each id's probability, uniform when None)."""
    dtype = np.dtype(dtype)
    if kind == MASK:
        return padded_masks(shape, dtype, rng)
    if kind == BOOL or dtype == np.bool_:
        return rng.random(shape) > 0.5
    if kind == IDS and weights is not None and len(weights) == high:
        return rng.choice(high, size=shape, p=np.asarray(weights, np.float64)).astype(dtype)
    if kind == IDS or not np.issubdtype(dtype, np.floating):
        return rng.integers(0, high, size=shape).astype(dtype)
    return floats(shape, dtype, rng, noise)
