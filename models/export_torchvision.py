"""Export torchvision classifiers to ONNX (random weights, BatchNorm kept).

Why: the test-suite and the benchmarks need real exporter output (Shape chains,
Flatten, channel shuffles, grouped convs) without shipping tens of megabytes of
random weights.  ``--skeleton`` writes a *weightless* model: every large float
initializer becomes a typed graph input listed in the metadata key
``spa_skeleton_weights``; :mod:`models.skeleton` materialises them again with
seeded random values.  Needs ``pip install -e .[zoo-torch]``.

    python models/export_torchvision.py resnet18 mobilenet_v2 --size 64 --skeleton -o models/torchvision
    python models/export_torchvision.py resnet18 densenet121 shufflenet_v2_x1_0 --skeleton --dynamo \
        -o models/torchvision_dynamo
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.skeleton import strip_weights  # noqa: E402

TEST_MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "squeezenet1_1",
               "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf", "vgg11_bn"]

# VGG's AdaptiveAvgPool2d(7) exports only when the feature map is a multiple of 7.
SIZE_OVERRIDES = {"vgg11_bn": 224, "vit_b_16": 32}
MODEL_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True}, "vit_b_16": {"image_size": 32}}
TRANSFORMER_MODELS = ["vit_b_16", "swin_t", "convnext_tiny"]


def export(name: str, path: str, size: int, dynamic_batch: bool = True, opset: int = 17,
           dynamo: bool = False) -> None:
    """Export one torchvision model in eval mode, keeping BatchNorm.

    TorchScript exporter: ``do_constant_folding=False``; dynamo exporter:
    ``optimize=False`` (both would otherwise fold BatchNorm into the convs).
    """
    import torch
    import torchvision

    kwargs = dict(MODEL_KWARGS.get(name, {}))
    if "image_size" in kwargs:
        kwargs["image_size"] = size
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    if dynamo:
        shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
        program = torch.onnx.export(model, (x,), dynamo=True, optimize=False, dynamic_shapes=shapes,
                                    input_names=["input"], output_names=["logits"], verbose=False)
        program.save(path)
        return
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=opset, do_constant_folding=False,
                      dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=TEST_MODELS)
    parser.add_argument("-o", "--out-dir", default=os.path.join(os.path.dirname(__file__), "torchvision"))
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--skeleton", action="store_true", help="strip weights (see module doc)")
    parser.add_argument("--dynamo", action="store_true", help="use the dynamo exporter (optimize=False)")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name in args.names:
        path = os.path.join(args.out_dir, f"{name}.onnx")
        export(name, path, SIZE_OVERRIDES.get(name, args.size), dynamo=args.dynamo)
        if args.skeleton:
            import onnx
            onnx.save(strip_weights(onnx.load(path)), path)
        print(f"{name}: {os.path.getsize(path) / 1e6:.2f} MB -> {path}")


if __name__ == "__main__":
    main()
