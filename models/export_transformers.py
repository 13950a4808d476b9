"""Export tiny Hugging Face transformers (built from configs, random weights) and torchvision ViTs to ONNX.

No weight download: every model is built from a config.  ``--skeleton``
strips the weights as in :mod:`models.skeleton`.  Needs
``pip install -e ".[zoo-torch]" transformers``.

    python models/export_transformers.py --skeleton -o models/transformers
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.skeleton import strip_weights  # noqa: E402

TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2)
EAGER = dict(attn_implementation="eager")  # explicit attention MatMuls, as most exports have them


def build(name: str):
    """(model, example inputs, input names, dynamic axes) for one tiny model."""
    import torch
    import transformers as tf

    ids = torch.randint(0, 100, (2, 7))
    text_axes = {"input_ids": {0: "batch", 1: "seq"}}
    if name == "bert":
        cfg = tf.BertConfig(**EAGER, vocab_size=100, max_position_embeddings=64, **TINY)
        return tf.BertModel(cfg), (ids,), ["input_ids"], text_axes
    if name == "distilbert":
        cfg = tf.DistilBertConfig(**EAGER, vocab_size=100, max_position_embeddings=64, dim=32, n_heads=4, hidden_dim=64,
                                  n_layers=2)
        return tf.DistilBertModel(cfg), (ids,), ["input_ids"], text_axes
    if name == "gpt2":
        cfg = tf.GPT2Config(**EAGER, vocab_size=100, n_positions=64, n_embd=32, n_head=4, n_layer=2)
        return tf.GPT2LMHeadModel(cfg), (ids,), ["input_ids"], text_axes
    if name == "llama":
        cfg = tf.LlamaConfig(**EAGER, vocab_size=100, max_position_embeddings=64, num_key_value_heads=2, **TINY)
        return tf.LlamaForCausalLM(cfg), (ids,), ["input_ids"], text_axes
    if name == "vit":
        cfg = tf.ViTConfig(**EAGER, image_size=32, patch_size=8, num_channels=3, **TINY)
        return tf.ViTModel(cfg, add_pooling_layer=False), (torch.randn(2, 3, 32, 32),), ["pixel_values"], \
            {"pixel_values": {0: "batch"}}
    raise ValueError(name)


class _Logits:
    """Wrap a HF model so the export has plain tensor outputs (no caches, no dicts)."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                out = self.model(x, use_cache=False) if "use_cache" in self.model.forward.__code__.co_varnames \
                    else self.model(x)
                return out[0]

        return Wrapper()


def export(name: str, path: str, dynamo: bool = False) -> None:
    import torch

    model, args, names, axes = build(name)
    model.eval()
    wrapped = _Logits(model).eval()
    if dynamo:
        program = torch.onnx.export(wrapped, args, dynamo=True, optimize=False, input_names=names,
                                    output_names=["out"], dynamic_axes=axes, verbose=False)
        program.save(path)
        return
    axes = {**axes, "out": {0: "batch"}}
    torch.onnx.export(wrapped, args, path, input_names=names, output_names=["out"], dynamic_axes=axes,
                      opset_version=17, do_constant_folding=False, dynamo=False)


NAMES = ["bert", "distilbert", "gpt2", "llama", "vit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=NAMES)
    parser.add_argument("-o", "--out-dir", default=os.path.join(os.path.dirname(__file__), "transformers"))
    parser.add_argument("--skeleton", action="store_true")
    parser.add_argument("--dynamo", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    import onnx

    for name in args.names:
        path = os.path.join(args.out_dir, f"{name}.onnx")
        export(name, path, args.dynamo)
        if args.skeleton:
            onnx.save(strip_weights(onnx.load(path)), path)
        print(f"{name}: {os.path.getsize(path) / 1e6:.2f} MB -> {path}")


if __name__ == "__main__":
    main()
