"""torchvision's ViT EncoderBlock stores num_heads for the nn.MultiheadAttention it builds and never reads it:
its MLP must be cut (it was frozen as "head count without an adapter", so ViT-B/L/H pruned nothing)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import spa_compiler.torch as spt  # noqa: E402
from spa_compiler.torch.modules import unadapted_owner  # noqa: E402
from tests.test_torch import module_vs_onnx, train_step  # noqa: E402
from tools.torch_roundtrip import randomize_zero_parameters  # noqa: E402


def tiny_vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4,
                                               hidden_dim=32, mlp_dim=48, num_classes=5)
    randomize_zero_parameters(vit)
    return vit


def test_encoder_block_head_count_mirrors_its_adapted_attention():
    vit = tiny_vit()
    block = "encoder.layers.encoder_layer_0"
    assert unadapted_owner(vit, f"{block}.mlp.0") is None
    assert unadapted_owner(vit, f"{block}.self_attention") is None

    class Reads(torch.nn.Module):  # a head count nothing below it carries: still frozen
        def __init__(self):
            super().__init__()
            self.num_heads = 3
            self.proj = torch.nn.Linear(4, 4)

    assert "head count without an adapter" in unadapted_owner(Reads(), "proj")


def test_torchvision_vit_mlp_and_heads_are_cut():
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    result = spt.prune(vit, x, ratio=0.5)
    assert not result.report["torch"]["frozen"]
    layer = vit.encoder.layers.encoder_layer_0
    assert layer.mlp[0].out_features < 48 and layer.self_attention.num_heads < 4
    assert layer.num_heads == layer.self_attention.num_heads  # the stored count follows the cut
    assert module_vs_onnx(vit, (x,), result.model) < 1e-4
    train_step(vit, (x,))
