"""PaddlePaddle zoo: ``paddle.vision.models`` exported by paddle2onnx (``pip install -e ".[zoo-paddle]"``).

paddle2onnx keeps weights in ``Constant`` nodes and writes some layers its own
way (``Flatten`` ranges, ``Shape``/``Slice`` chains for reshapes, channel
shuffles); ``pretrained=False`` everywhere, so nothing is downloaded.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from models.zoo import ZooModel

FRAMEWORK = "paddle"
REQUIRES = ("paddle", "paddle2onnx")
MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v1", "mobilenet_v2",
          "mobilenet_v3_small", "mobilenet_v3_large", "vgg11", "alexnet", "squeezenet1_1", "shufflenet_v2_x1_0",
          "shufflenet_v2_swish", "densenet121", "googlenet", "inception_v3", "lenet")
SHAPE = {"lenet": (1, 28, 28), "alexnet": (3, 224, 224), "vgg11": (3, 224, 224), "googlenet": (3, 224, 224),
         "inception_v3": (3, 299, 299)}  # adaptive pools to 7x7 (vgg) crash the exporter on smaller maps


def build(name: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        import paddle

        kwargs = {} if name == "lenet" else {"pretrained": False}
        if name in ("resnet18", "mobilenet_v2", "lenet"):
            kwargs["num_classes"] = 10
        model = getattr(paddle.vision.models, "LeNet" if name == "lenet" else name)(**kwargs)
        model.eval()
        spec = [paddle.static.InputSpec([None, *SHAPE.get(name, (3, 64, 64))], "float32", "input")]
        with tempfile.TemporaryDirectory() as tmp:
            prefix = str(Path(tmp) / name)
            paddle.onnx.export(model, prefix, input_spec=spec, opset_version=13)
            Path(prefix + ".onnx").replace(path)
    return run


def entries() -> list[ZooModel]:
    return [ZooModel(name, FRAMEWORK, build(name), REQUIRES) for name in MODELS]


TINY = ("lenet", "mobilenet_v2", "shufflenet_v2_x1_0")  # committed for the tests (weightless skeletons)
