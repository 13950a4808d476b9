"""Train the accuracy-benchmark models on bundled scikit-learn datasets (CPU, under a minute each) and export them.

    pip install -e ".[zoo-torch]" scikit-learn
    python models/train_benchmarks.py            # writes models/trained/*.onnx and *_test.npz

- ``digits_cnn``: Conv-BN-ReLU network with residual adds on the 8x8 digits, upsampled to 16x16.
- ``digits_vit``: a small ViT (patch embedding, 4 heads, 2 blocks) on the same images.
- ``tabular_mlp``: an MLP with BatchNorm on breast_cancer (30 standardized features).

No downloads: the datasets ship inside scikit-learn.  Each model is exported
with BatchNorm kept (``do_constant_folding=False``), and the held-out test
split is saved next to it as ``<name>_test.npz`` (arrays ``x`` and ``y``);
a calibration split from the training data is saved as ``<name>_calib.npz``.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained")


def digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((2, 2), np.float32))[:, None]  # 8x8 -> 16x16, one channel
    x = (x - 0.3) / 0.4
    return train_test_split(x, data.target.astype(np.int64), test_size=0.3, random_state=seed,
                            stratify=data.target)


def tabular(seed: int):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(data.data, data.target.astype(np.int64), test_size=0.3,
                                              random_state=seed, stratify=data.target)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    return ((x_tr - mean) / std).astype(np.float32), ((x_te - mean) / std).astype(np.float32), y_tr, y_te


def build(name: str):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    if name == "digits_cnn":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), Block(32),
                             nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(), Block(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    if name == "digits_vit":
        class ViT(nn.Module):
            def __init__(self, dim=64, heads=4, depth=2):
                super().__init__()
                self.patch = nn.Conv2d(1, dim, 4, stride=4)
                self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
                layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.0, batch_first=True,
                                                   norm_first=True)
                self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
                self.norm = nn.LayerNorm(dim)
                self.head = nn.Linear(dim, 10)

            def forward(self, x):
                tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
                return self.head(self.norm(self.encoder(tokens)).mean(1))

        return ViT()
    if name == "tabular_mlp":
        return nn.Sequential(nn.Linear(30, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128),
                             nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 2))
    raise ValueError(name)


def train(name: str, seed: int = 0, epochs: int = 40, out: str = OUT, stem: str = "") -> float:
    """Train, export and save *name* under *out* as ``<stem or name>.onnx`` (+ .pt, _test.npz, _calib.npz).

    Other seeds (a new split and initialization) let a benchmark average out
    the noise of a small test set; they go to a cache folder, not the repository.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = tabular(seed) if name == "tabular_mlp" else digits(seed)
    model = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(xt) + 63) // 64))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    stem = stem or name
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{stem}.onnx")
    torch.onnx.export(model, (xt[:2],), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      do_constant_folding=False, dynamo=False)
    torch.save(model.state_dict(), os.path.join(out, f"{stem}.pt"))  # for the Torch-Pruning reference rows
    np.savez_compressed(os.path.join(out, f"{stem}_test.npz"), x=x_te, y=y_te)
    rng = np.random.default_rng(seed)
    np.savez_compressed(os.path.join(out, f"{stem}_calib.npz"), x=x_tr[rng.permutation(len(x_tr))[:256]])
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["digits_cnn", "digits_vit", "tabular_mlp"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import time

    for name in args.names:
        start = time.time()
        acc = train(name, args.seed)
        print(f"{name}: test accuracy {acc:.4f} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
