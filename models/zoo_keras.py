"""TensorFlow/Keras zoo: ``keras.applications`` exported by tf2onnx (``pip install -e ".[zoo-tf]"``).

Keras is channels-last, so tf2onnx's graphs are full of NHWC<->NCHW
Transposes around every Conv and Reshapes of channel-last tensors: the
analysis sees channels on the last axis and must carry them through those
permutations.  ``weights=None``, small inputs, 10 classes: nothing downloaded.
The export goes through ``tf2onnx.convert.from_function`` because Keras 3
models no longer carry what ``from_keras`` reads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from models.zoo import ZooModel

FRAMEWORK = "keras"
REQUIRES = ("tensorflow", "tf2onnx")
SIZE = 96
APPLICATIONS = ("ResNet50", "ResNet50V2", "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
                "EfficientNetB0", "EfficientNetV2B0", "DenseNet121", "VGG16", "Xception", "InceptionV3",
                "NASNetMobile", "RegNetX002", "ConvNeXtTiny")


def small_cnn(keras):
    """A tiny residual CNN (Conv, BN, depthwise, residual add, pooling, Dense) for the committed test export."""
    inputs = keras.Input((32, 32, 3), name="input")
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    y = keras.layers.Conv2D(16, 1)(keras.layers.BatchNormalization()(y))
    x = keras.layers.Add()([x, keras.layers.ReLU()(y)])
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(x))
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def build(name: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        import tf2onnx

        keras = tf.keras
        if name == "small_cnn":
            model, shape = small_cnn(keras), (32, 32, 3)
        else:
            shape = (SIZE, SIZE, 3)
            model = getattr(keras.applications, name)(weights=None, input_shape=shape, classes=10)
        spec = [tf.TensorSpec((None, *shape), tf.float32, name="input")]
        forward = tf.function(lambda x: model(x, training=False), input_signature=spec)
        tf2onnx.convert.from_function(forward, input_signature=spec, opset=17, output_path=str(path))
    return run


def entries() -> list[ZooModel]:
    return [ZooModel(name.lower(), FRAMEWORK, build(name), REQUIRES) for name in APPLICATIONS + ("small_cnn",)]


TINY = ("small_cnn", "mobilenetv2")  # committed for the tests (mobilenetv2 as a weightless skeleton)
