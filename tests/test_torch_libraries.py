"""spa_compiler.torch on layers of torchvision, timm and Hugging Face (attention heads, scales): the module follows.

Each case prunes a tiny model built from the library's own classes in place,
checks the head count attributes against the kept projection rows, that the
pruned module computes what the pruned ONNX model computes, and that it
trains.  Skipped without torch (and per case without the library).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spa_compiler.torch as spt  # noqa: E402
from spa_compiler.torch.derived import scope_module  # noqa: E402
from spa_compiler.torch.provenance import repeats_stay_in_one_channel  # noqa: E402
from tests.test_torch import module_vs_onnx, train_step  # noqa: E402
from tools.torch_roundtrip import randomize_zero_parameters  # noqa: E402


def prune_tiny(module, x):
    torch.manual_seed(0)
    randomize_zero_parameters(module)
    result = spt.prune(module, x, ratio=0.5)
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
    train_step(module, (x,))
    return result


def test_repeats_inside_one_channel_may_be_cut():
    """A bias gathered from a (positions, heads) table repeats table elements, each within its own head."""
    table = np.arange(6).reshape(3, 2)  # 3 relative positions x 2 heads
    gathered = table[np.array([[0, 1], [2, 0]])].transpose(2, 0, 1)  # heads, tokens, tokens
    assert repeats_stay_in_one_channel(gathered, 0)
    assert not repeats_stay_in_one_channel(gathered, 1), "a token row cut would take some repeats and leave others"
    assert not repeats_stay_in_one_channel(np.array([[0, 1], [0, 2]]), 0), "element 0 in channels 0 and 1"


class Head(torch.nn.Module):
    """A backbone returning (B, ..., C) features, pooled to a few logits so outputs stay comparable."""

    def __init__(self, body, width):
        super().__init__()
        self.body, self.out = body, torch.nn.Linear(width, 3)

    def forward(self, x):
        features = self.body(x)
        features = getattr(features, "last_hidden_state", features)
        return self.out(features.flatten(1, -2).mean(1))


def test_torchvision_swin_heads():
    """ShiftedWindowAttention passes C // num_heads as the head width: a pruned one gets a forward of its own."""
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    body = swin.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2], num_heads=[4], window_size=[2, 2],
                                num_classes=5)  # 4x4 tokens in 2x2 windows: the second block shifts
    module = torch.nn.Sequential(body)
    result = prune_tiny(module, torch.randn(2, 3, 8, 8))
    attentions = [block.attn for block in body.features[1]]
    assert not result.report["torch"]["frozen"]
    assert all(type(a).__name__ == "PrunedShiftedWindowAttention" for a in attentions)
    for attn in attentions:
        assert attn.num_heads * 4 == attn.proj.in_features and attn.relative_position_bias_table.shape[1] == \
            attn.num_heads
    assert sum(a.num_heads for a in attentions) == 4, "half of the 8 heads go"


def test_torchvision_swin_v2_heads_follow_their_derived_constants():
    """V2 computes its position bias (an MLP), logit scale (clamp, exp) and qkv bias (key third zeroed) in
    forward; the graph holds them folded.  Heads are cut at their sources: the MLP's last rows, the scales."""
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    torch.manual_seed(0)
    body = swin.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2], num_heads=[4], window_size=[2, 2],
                                num_classes=5, block=swin.SwinTransformerBlockV2,
                                downsample_layer=swin.PatchMergingV2)
    for block in body.features[1]:  # distinct scales per head, so a wrong row would show
        block.attn.logit_scale.data = torch.log(torch.arange(1.0, 5.0) + 5).view(4, 1, 1)
    result = prune_tiny(body, torch.randn(2, 3, 8, 8))
    assert not result.report["torch"]["frozen"]
    attentions = [block.attn for block in body.features[1]]
    for attn in attentions:
        assert attn.cpb_mlp[2].out_features == attn.logit_scale.shape[0] == attn.num_heads
        assert attn.qkv.out_features == 3 * 4 * attn.num_heads and attn.proj.in_features == 4 * attn.num_heads
        assert (attn.num_heads < 4) == (type(attn).__name__ == "PrunedShiftedWindowAttentionV2")
    assert sum(a.num_heads for a in attentions) < 8, "heads go"


def test_torchvision_maxvit_heads_and_mlp():
    """MaxViT's attention chunks its fused qkv in thirds and reshapes its output to the input width: a pruned one
    gets a forward of its own; the MLP of its PartitionAttentionLayer (which stores n_heads) is cut too."""
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    torch.manual_seed(0)
    body = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[64],
                         block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5)  # 8 heads
    result = prune_tiny(body, torch.randn(2, 3, 32, 32))
    assert not result.report["torch"]["frozen"]
    layers = [m for m in body.modules() if isinstance(m, maxvit.PartitionAttentionLayer)]
    attentions = [layer.attn_layer[1] for layer in layers]
    for layer, attn in zip(layers, attentions):
        assert attn.to_qkv.out_features == 3 * 8 * attn.n_heads == 3 * attn.merge.in_features
        assert attn.relative_position_bias_table.shape[1] == attn.n_heads == layer.n_heads
        assert (attn.n_heads < 8) == (type(attn).__name__ == "PrunedRelativePositionalMultiHeadAttention")
    assert sum(a.n_heads for a in attentions) < 16, "heads go"
    assert any(layer.mlp_layer[1].out_features < 256 for layer in layers), "MLP units go"


def test_torchvision_vit_encoder_block_stores_its_head_count():
    """EncoderBlock keeps num_heads (its forward never reads it): it must not freeze its MLP and attention."""
    vit = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(0)
    module = vit.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64,
                                   mlp_dim=128, num_classes=5)
    result = prune_tiny(module, torch.randn(2, 3, 32, 32))
    assert not result.report["torch"]["frozen"]
    blocks = list(module.encoder.layers)
    assert all(block.num_heads == block.self_attention.num_heads for block in blocks)
    assert any(block.mlp[0].out_features < 128 for block in blocks), "MLP units go"


def test_scope_module_follows_the_exporter_scope_names():
    swin = pytest.importorskip("torchvision.models.swin_transformer")
    body = swin.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2], num_heads=[4], window_size=[2, 2])
    assert scope_module(body, "/features/features.1/features.1.0/attn/Mul_output_0") == "features.1.0.attn"
    assert scope_module(body, "/features/features.1/features.1.0/attn/cpb/Mul_output_0") == "features.1.0.attn"
    assert scope_module(body, "onnx::Mul_12") is None
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    net = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16], block_layers=[1],
                        head_dim=8, stochastic_depth_prob=0.0)
    name = "/blocks.0/layers.0/layers/grid_attention/attn_layer/attn_layer.1/Slice"
    assert scope_module(net, name) == "blocks.0.layers.0.layers.grid_attention.attn_layer.1"


def test_timm_window_attention_heads():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    body = timm_swin.SwinTransformer(img_size=8, patch_size=2, embed_dim=16, depths=(2,), num_heads=(4,),
                                     window_size=2, num_classes=5)
    result = prune_tiny(body, torch.randn(2, 3, 8, 8))
    attentions = [block.attn for block in body.layers[0].blocks]
    assert not result.report["torch"]["frozen"]
    assert sum(a.num_heads for a in attentions) == 4
    assert all(a.relative_position_bias_table.shape[1] == a.num_heads == a.qkv.out_features // 12
               for a in attentions)


def test_hugging_face_bert_heads():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=24, max_position_embeddings=16)
    body = transformers.BertModel(config, add_pooling_layer=False).eval()
    module = Head(body, 32)
    tokens = torch.randint(0, 40, (2, 6))
    torch.manual_seed(0)
    randomize_zero_parameters(module)
    result = spt.prune(module, tokens, ratio=0.5)
    attn = body.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.all_head_size == 16 == attn.query.out_features
    assert module_vs_onnx(module, (tokens,), result.model) < 1e-4
    train_step(module, (tokens,))


def test_hugging_face_swin_heads():
    """Unshifted blocks lose heads; a shifted block's bias plus shift mask folds into one constant: frozen, said."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=8, patch_size=2, embed_dim=16, depths=[2], num_heads=[4],
                                     window_size=2, num_channels=3)
    module = Head(transformers.SwinModel(config, add_pooling_layer=False), 16)
    result = prune_tiny(module, torch.randn(2, 3, 8, 8))
    plain, shifted = (block.attention for block in module.body.encoder.layers[0].blocks)
    (reason,) = result.report["torch"]["frozen"].values()
    assert "blocks.1/attention" in reason and "computed in forward" in reason
    assert plain.num_attention_heads == 2 == plain.relative_position_bias.relative_position_bias_table.shape[1]
    assert shifted.num_attention_heads == 4 and shifted.q_proj.out_features == 16


def test_timm_metaformer_scale_shape_follows():
    """PoolFormer's Scale multiplies by scale.view(self.shape): the shape attribute follows the cut vector."""
    metaformer = pytest.importorskip("timm.models.metaformer")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), metaformer.Scale(16), torch.nn.ReLU(),
                                 torch.nn.Conv2d(16, 5, 1), torch.nn.Flatten(1))
    with torch.no_grad():
        module[1].scale.uniform_(0.5, 1.5)
    prune_tiny(module, torch.randn(2, 3, 6, 6))
    assert module[1].shape == (8, 1, 1) == (module[0].out_channels, 1, 1)


class WidthFromInput(torch.nn.Module):
    """An attention reading its head width as C // num_heads (like timm's CaiT, BEiT, XCiT): no adapter follows."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.num_heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads).permute(
            2, 0, 3, 1, 4)
        out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


def test_heads_of_an_attention_without_adapter_are_frozen():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 16), WidthFromInput(), torch.nn.Linear(16, 24), torch.nn.ReLU(),
                                 torch.nn.Linear(24, 3))
    result = prune_tiny(module, torch.randn(1, 6, 5))
    reasons = list(result.report["torch"]["frozen"].values())  # the heads, and the widths C it reads
    assert reasons and all("WidthFromInput (head count without an adapter)" in r for r in reasons)
    assert module[1].qkv.weight.shape == (48, 16) and module[2].out_features == 12, "heads kept, the MLP pruned"
