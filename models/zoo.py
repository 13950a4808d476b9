"""The model zoo: builders that export models from several frameworks to ONNX (no weight downloads).

Each entry knows its framework and how to write its ONNX file; outputs are
cached under ``models/cache/zoo/`` (git-ignored), never committed.  Random
initialisation everywhere (``weights=None``, ``pretrained=False``, configs).
Frameworks are optional extras (``zoo-torch``, ``zoo-tf``, ``zoo-jax``,
``zoo-paddle``, ``zoo-sklearn``), each best installed in its own venv: an entry
whose framework is not importable is skipped by ``tools/coverage.py``.

Here: torchvision (classification under 150 M parameters, segmentation,
detection backbones with their heads), timm, Hugging Face transformers from
configs.  The other frameworks live in one module each (:data:`FRAMEWORK_MODULES`),
whose ``entries()`` list models without importing the framework.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CACHE = Path(__file__).resolve().parent / "cache" / "zoo"


@dataclass(frozen=True)
class ZooModel:
    name: str
    framework: str
    build: Callable[[Path], None]
    requires: tuple[str, ...] = ("torch",)  # import names the builder needs

    def available(self) -> bool:
        """Whether this environment can build the model (frameworks live in separate venvs)."""
        return all(importlib.util.find_spec(module) is not None for module in self.requires)

    @property
    def path(self) -> Path:
        return CACHE / self.framework / f"{self.name}.onnx"

    def ensure(self) -> Path:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp.onnx")
            self.build(tmp)
            tmp.replace(self.path)
        return self.path


def _torch_export(module, example, path: Path, input_names=("input",), dynamic_batch: bool = True) -> None:
    import torch

    axes = {name: {0: "batch"} for name in input_names} if dynamic_batch else None
    torch.onnx.export(module.eval(), example, str(path), input_names=list(input_names), dynamic_axes=axes,
                      opset_version=17, do_constant_folding=False, dynamo=False)


# --- torchvision -----------------------------------------------------------------------------------------
TV_SKIP = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf",
           "regnet_y_16gf", "efficientnet_v2_l", "vgg19", "vgg19_bn", "vgg16", "vgg16_bn", "vgg13", "vgg13_bn",
           "convnext_large", "swin_v2_b", "swin_b", "vit_b_32"}  # > ~130 M parameters or redundant with a tested sibling
TV_SIZE = {"inception_v3": 96, "maxvit_t": 224, "swin_t": 64, "swin_s": 64, "swin_v2_t": 64, "swin_v2_s": 64,
           "alexnet": 224, "vgg11": 224, "vgg11_bn": 224}  # adaptive pools need a multiple of their size


def _torchvision(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        size = TV_SIZE.get(name, 64)
        if name.startswith("vit_"):
            kwargs["image_size"] = size = 32
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        _torch_export(model, (torch.randn(1, 3, size, size),), path)
    return build


def _torchvision_segmentation(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch
        import torchvision

        inner = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5, aux_loss=False)

        class Out(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["out"]

        _torch_export(Out(), (torch.randn(1, 3, 64, 64),), path)
    return build


# --- timm --------------------------------------------------------------------------------------------------
TIMM = ["resnet18", "resnet50d", "resnext26ts", "seresnext26d_32x4d", "ecaresnet26t", "res2net50_14w_8s",
        "resnest14d", "regnety_002", "regnetz_b16", "dla34", "dpn68", "densenet121", "hrnet_w18_small",
        "cspresnet50", "cspdarknet53", "repvgg_a0", "gernet_s", "efficientnet_b0", "tf_efficientnet_lite0",
        "mobilenetv2_100", "mobilenetv3_small_100", "mixnet_s", "rexnet_100", "ghostnet_100", "lcnet_050",
        "mnasnet_100", "fbnetc_100", "tinynet_a", "convnext_atto", "convnextv2_atto", "mobilevit_xxs",
        "efficientformer_l1", "poolformer_s12", "edgenext_xx_small", "levit_128s", "vit_tiny_patch16_224",
        "deit_tiny_patch16_224", "cait_xxs24_224", "pit_ti_224", "swin_tiny_patch4_window7_224",
        "mixer_s16_224", "resmlp_12_224", "gmlp_ti16_224", "nf_resnet26", "xception41", "inception_v3"]
TIMM_SIZE = 224


def _timm(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import timm
        import torch

        model = timm.create_model(name, pretrained=False)
        size = model.pretrained_cfg.get("input_size", (3, TIMM_SIZE, TIMM_SIZE))
        _torch_export(model, (torch.randn(1, *size),), path)
    return build


# --- Hugging Face transformers ------------------------------------------------------------------------------
def _hf(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch
        import transformers as tf

        tiny = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                    attn_implementation="eager")
        ids = torch.randint(0, 100, (2, 7))
        text = (ids,), ("input_ids",)
        if name == "bert":
            model, (args, names) = tf.BertModel(tf.BertConfig(vocab_size=100, **tiny)), text
        elif name == "roberta":
            model, (args, names) = tf.RobertaModel(tf.RobertaConfig(vocab_size=100, **tiny)), text
        elif name == "distilbert":
            model, (args, names) = tf.DistilBertModel(tf.DistilBertConfig(
                vocab_size=100, dim=32, n_heads=4, hidden_dim=64, n_layers=2, attn_implementation="eager")), text
        elif name == "gpt2":
            model, (args, names) = tf.GPT2LMHeadModel(tf.GPT2Config(
                vocab_size=100, n_embd=32, n_head=4, n_layer=2, attn_implementation="eager")), text
        elif name == "llama":
            model, (args, names) = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=100, num_key_value_heads=2,
                                                                        **tiny)), text
        elif name == "vit":
            model = tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, **tiny), add_pooling_layer=False)
            args, names = (torch.randn(2, 3, 32, 32),), ("pixel_values",)
        elif name == "t5_encoder":
            model = tf.T5EncoderModel(tf.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                  num_heads=4, attn_implementation="eager"))
            args, names = text
        elif name == "whisper_encoder":
            cfg = tf.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                                   decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                                   num_mel_bins=16, max_source_positions=50, attn_implementation="eager")
            model = tf.WhisperModel(cfg).get_encoder()
            args, names = (torch.randn(2, 16, 100),), ("input_features",)
        else:
            raise ValueError(name)

        class First(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x)[0]

        _torch_export(First(), args, path, input_names=names)
    return build


HF = ["bert", "roberta", "distilbert", "gpt2", "llama", "vit", "t5_encoder", "whisper_encoder"]


# --- torchvision detection: backbone + FPN + heads, raw head outputs (box decoding and NMS are not layers) --
TV_DETECTION = ("retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large",
                "fasterrcnn_mobilenet_v3_large_fpn", "ssd300_vgg16")


def _torchvision_detection(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import torch
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=5)

        class Heads(torch.nn.Module):
            """Backbone features into the detection head (the RPN head for two-stage models)."""

            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                features = list(self.model.backbone(x).values())
                if hasattr(self.model, "rpn"):
                    objectness, deltas = self.model.rpn.head(features)
                    return tuple(objectness) + tuple(deltas)
                return tuple(self.model.head(features).values())

        size = 320 if "ssd" in name else 128
        _torch_export(Heads(), (torch.randn(1, 3, size, size),), path)
    return build


FRAMEWORK_MODULES = ("models.zoo_keras", "models.zoo_jax", "models.zoo_paddle", "models.zoo_sklearn", "models.zoo_graphs")


def zoo() -> list[ZooModel]:
    entries: list[ZooModel] = []
    try:
        import torchvision

        names = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in TV_SKIP]
    except ImportError:
        names = []
    tv = ("torch", "torchvision")
    entries += [ZooModel(n, "torchvision", _torchvision(n), tv) for n in names]
    entries += [ZooModel(n, "torchvision", _torchvision_segmentation(n), tv)
                for n in ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")]
    entries += [ZooModel(n, "torchvision", _torchvision_detection(n), tv) for n in TV_DETECTION]
    entries += [ZooModel(n, "timm", _timm(n), ("torch", "timm")) for n in TIMM]
    entries += [ZooModel(n, "transformers", _hf(n), ("torch", "transformers")) for n in HF]
    for module in FRAMEWORK_MODULES:
        entries += importlib.import_module(module).entries()
    return entries
