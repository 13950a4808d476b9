"""Small Flax (NNX) models for the JAX zoo, exported with jax2onnx.

Why these four: each brings a different jax2onnx habit — a plain MLP
(``dot_general`` as MatMul + bias Add), an NHWC CNN with BatchNorm (Transposes
around every Conv), a residual block (a group shared by an Add), and a
transformer block (``MultiHeadAttention`` reshapes heads, LayerNorm).
Random initialisation from a fixed key; batch is dynamic (``"B"``).
"""
from __future__ import annotations

from pathlib import Path

OPSET = 21


def _models():
    from flax import nnx

    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2, self.l3 = nnx.Linear(16, 64, rngs=rngs), nnx.Linear(64, 32, rngs=rngs), \
                nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))

    class Cnn(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.b1 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
            self.c2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
            self.b2 = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
            self.head = nnx.Linear(32 * 8 * 8, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.b1(self.c1(x)))
            x = nnx.relu(self.b2(self.c2(x)))
            return self.head(x.reshape(x.shape[0], -1))

    class ResBlock(nnx.Module):
        def __init__(self, rngs):
            self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.a = nnx.Conv(16, 32, (3, 3), rngs=rngs)
            self.b = nnx.Conv(32, 16, (3, 3), rngs=rngs)
            self.head = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.stem(x))
            x = nnx.relu(x + self.b(nnx.relu(self.a(x))))
            return self.head(x.mean(axis=(1, 2)))

    class Attention(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Linear(8, 32, rngs=rngs)
            self.norm1, self.norm2 = nnx.LayerNorm(32, rngs=rngs), nnx.LayerNorm(32, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, rngs=rngs)
            self.up, self.down = nnx.Linear(32, 64, rngs=rngs), nnx.Linear(64, 32, rngs=rngs)
            self.head = nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            x = self.embed(x)
            x = x + self.attn(self.norm1(x))
            x = x + self.down(nnx.gelu(self.up(self.norm2(x))))
            return self.head(x)

    return {"mlp": (Mlp, ("B", 16)), "cnn": (Cnn, ("B", 16, 16, 3)), "resnet_block": (ResBlock, ("B", 16, 16, 3)),
            "attention": (Attention, ("B", 6, 8))}


def export(name: str, path: Path) -> None:
    """Build *name* with seeded random weights and write its ONNX export to *path*."""
    from flax import nnx
    from jax2onnx import to_onnx

    cls, shape = _models()[name]
    model = cls(nnx.Rngs(0))
    to_onnx(model, [shape], model_name=name, opset=OPSET, return_mode="file", output_path=str(path))
