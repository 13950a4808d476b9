"""spa_compiler.torch: the pruned module computes what the pruned ONNX model computes, and still trains.

Skipped without torch (the CI install has none); tools/torch_roundtrip.py runs every torchvision model.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import spa_compiler.torch as spt  # noqa: E402
from spa_compiler.errors import UsageError  # noqa: E402
from spa_compiler.runtime import run  # noqa: E402
from tools.torch_roundtrip import randomize_zero_parameters  # noqa: E402


class ConvNet(nn.Module):
    """Conv2d, BatchNorm, a depthwise conv, GroupNorm, PReLU, ConvTranspose2d, Conv1d and Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.PReLU(16))
        self.mid = nn.Sequential(nn.Conv2d(16, 24, 1), nn.GroupNorm(4, 24), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(24, 12, 2, stride=2), nn.InstanceNorm2d(12, affine=True), nn.ReLU())
        self.line = nn.Sequential(nn.Conv1d(12, 20, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x):
        x = self.up(self.mid(self.dw(self.stem(x))))
        x = self.line(x.flatten(2)).mean(-1)
        return self.head(x)


class TinyTransformer(nn.Module):
    """Embedding, MultiheadAttention (batch first), LayerNorm and an MLP: heads and hidden units get cut."""

    def __init__(self, vocab=50, dim=48, heads=4):  # no two dims alike: reshapes stay readable
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
        x = self.norm2(x + self.mlp(x))
        return self.out(x.mean(1))


def module_vs_onnx(module, inputs, model) -> float:
    inputs = tuple(t[:1] for t in inputs)  # the export (and so the pruned model) takes one sample
    module.eval()
    with torch.no_grad():
        mine = module(*inputs).numpy()
    theirs = run(model, {f"input_{i}": t.numpy() for i, t in enumerate(inputs)})[0]
    return float(np.linalg.norm(mine - theirs) / np.linalg.norm(theirs))


def train_step(module, inputs) -> None:
    """One SGD step on the pruned module: gradients reach every parameter, which then change and stay finite."""
    module.train()
    before = [p.detach().clone() for p in module.parameters()]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module(*inputs).logsumexp(-1).mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, module.parameters()))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


CASES = {"convnet": (ConvNet, lambda: (torch.randn(2, 3, 8, 8),)),
         "transformer": (TinyTransformer, lambda: (torch.randint(0, 50, (2, 5)),))}


@pytest.mark.parametrize("criterion", ["l2", "obspa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pruned_module_computes_the_pruned_graph_and_trains(case, criterion):
    make, inputs = CASES[case]
    torch.manual_seed(0)
    module = make()
    randomize_zero_parameters(module)
    x = inputs()
    dense = count(module)
    result = spt.prune(module, x, ratio=0.5, criterion=criterion)
    assert result.module is module, "pruned in place"
    assert count(module) < 0.9 * dense
    assert module_vs_onnx(module, x, result.model) < 1e-4
    assert result.report["torch"]["module_vs_onnx_error"] < 1e-4
    train_step(module, x)


def test_layer_attributes_follow_the_cut():
    torch.manual_seed(0)
    module = ConvNet()
    spt.prune(module, (torch.randn(2, 3, 8, 8),), ratio=0.5)
    stem, dw, gn = module.stem[0], module.dw[0], module.mid[1]
    assert stem.out_channels == stem.weight.shape[0] < 16
    assert dw.groups == dw.in_channels == dw.out_channels == stem.out_channels
    assert gn.num_channels == gn.weight.shape[0] and gn.num_channels % gn.num_groups == 0
    assert module.head[0].in_features == module.line[0].out_channels < 20
    assert module.dw[2].num_parameters == dw.out_channels
    torch.manual_seed(0)
    tiny = TinyTransformer()
    spt.prune(tiny, (torch.randint(0, 50, (2, 5)),), ratio=0.5)
    assert tiny.attn.num_heads == 2 and tiny.attn.in_proj_weight.shape == (3 * 2 * 12, 48)
    assert isinstance(tiny.attn, nn.MultiheadAttention) and tiny.mlp[0].out_features == 32
    assert tiny.attn.out_proj.in_features == 24 and tiny.attn.embed_dim == 48


def test_pruned_attention_keeps_nn_multihead_attention_semantics():
    """The replacement forward equals nn.MultiheadAttention's on an uncut module, masks and weights included."""
    from spa_compiler.torch.modules import _multihead_attention

    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    pruned = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    pruned.load_state_dict(reference.state_dict())
    _multihead_attention(pruned, {})
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, -2:] = True
    mask = torch.rand(5, 7) > 0.8
    want = reference(q, k, k, key_padding_mask=padding, attn_mask=mask, average_attn_weights=False)
    got = pruned(q, k, k, key_padding_mask=padding, attn_mask=mask, average_attn_weights=False)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-5)


class WeightStandardized(nn.Module):
    """A conv whose weight is computed in forward: not a module tensor, so its output group is frozen."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.tail = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        w = self.conv.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self.tail(torch.relu(nn.functional.conv2d(x, w, padding=1))).mean((2, 3))


class Chunked(nn.Module):
    """chunk(2) halves whatever it gets: the groups through it are frozen, the rest is cut."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU(), nn.Conv2d(12, 8, 1))
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.c(torch.cat([left, self.b(right)], dim=1)).mean((2, 3))


@pytest.mark.parametrize("make, says", [(WeightStandardized, "is not a module parameter"),
                                        (Chunked, "computes its own bounds")])
def test_what_the_module_cannot_follow_is_frozen_and_said(make, says):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(2, 3, 6, 6)
    result = spt.prune(module, x, ratio=0.5)
    reasons = list(result.report["torch"]["frozen"].values())
    assert reasons and all(says in r for r in reasons), reasons
    assert result.plan.removed, "the other groups are still pruned"
    assert module_vs_onnx(module, (x,), result.model) < 1e-4


def test_copy_leaves_the_module_alone_and_bad_inputs_are_one_line_errors():
    torch.manual_seed(0)
    module = ConvNet()
    dense = count(module)
    result = spt.prune(module, torch.randn(2, 3, 8, 8), ratio=0.5, inplace=False)
    assert count(module) == dense and result.module is not module and count(result.module) < dense
    assert module.training, "training mode restored"
    with pytest.raises(UsageError, match="example_inputs"):
        spt.prune(module, [np.zeros((2, 3, 8, 8))])
    with pytest.raises(UsageError, match="ratio"):
        spt.prune(module, torch.randn(2, 3, 8, 8), ratio=1.5)


@pytest.mark.slow
def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.resnet18()
    x = torch.randn(2, 3, 32, 32)
    result = spt.prune(module, x, ratio=0.5)
    assert result.report["macs"]["after"] < 0.4 * result.report["macs"]["before"]
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
    train_step(module, (x,))


def test_timm_attention_heads():
    timm_layers = pytest.importorskip("timm.layers")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 48)
            self.attn = timm_layers.Attention(48, num_heads=4, qkv_bias=True)
            self.out = nn.Linear(48, 3)

        def forward(self, x):
            x = self.inp(x)
            return self.out((x + self.attn(x)).mean(1))

    torch.manual_seed(0)
    module = Block()
    x = torch.randn(1, 5, 6)
    # per group: the adapter is under test, not the measured allocation (which may keep every head or cut 3)
    result = spt.prune(module, x, ratio=0.5, global_ranking=False)
    assert module.attn.num_heads == 2 and module.attn.qkv.out_features == 3 * 2 * 12
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
    train_step(module, (x,))


def test_snip_scores_are_group_sums_of_weight_times_gradient():
    """SNIP's score of a hidden unit is sum |w * dL/dw| over its fc1 row, fc1 bias and fc2 column (by hand)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(module(x), y)
    g1, b1, g2 = torch.autograd.grad(loss, [module[0].weight, module[0].bias, module[2].weight])
    expected = ((module[0].weight * g1).abs().sum(1) + (module[0].bias * b1).abs()
                + (module[2].weight * g2).abs().sum(0)).detach().numpy()
    result = spt.prune(module, x, criterion="snip", batch=(x, y), ratio=0.3)
    (scores,) = result.onnx_result.scores.values()
    assert np.allclose(scores, expected, rtol=1e-5)
    assert set(result.plan.removed[next(iter(result.plan.removed))]) == set(np.argsort(expected)[:3])


@pytest.mark.parametrize("criterion", ["snip", "taylor", "grasp", "crop"])
def test_gradient_criteria_prune_and_train(criterion):
    torch.manual_seed(0)
    module = ConvNet()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    result = spt.prune(module, x, criterion=criterion, batch=(x, y), ratio=0.5)
    assert result.report["criterion"] == criterion and result.plan.removed
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
    train_step(module, (x,))


def test_gradient_criteria_need_the_batch(demo_path):
    with pytest.raises(UsageError, match="batch"):
        spt.prune(ConvNet(), torch.randn(1, 3, 8, 8), criterion="snip")
    import spa_compiler

    with pytest.raises(UsageError, match="computed in PyTorch"):
        spa_compiler.prune(str(demo_path), criterion="snip")


def test_transformer_encoder_layers_after_head_pruning():
    """models/train_benchmarks.py's digits ViT (nn.TransformerEncoder): heads go, no_grad inference still matches."""
    from models.train_benchmarks import build

    torch.manual_seed(0)
    module = build("digits_vit")
    x = torch.randn(2, 1, 16, 16)
    result = spt.prune(module, x, ratio=0.5, global_ranking=False)  # per-group: exact counts
    layer = module.encoder.layers[0]
    assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 64
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
    train_step(module, (x,))


class Mixer(nn.Module):
    """A module type with no adapter owning a matrix: its forward might read widths nobody updates."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(10, 12) * 0.3)

    def forward(self, x):
        return x @ self.proj


def test_tensors_of_modules_without_adapter_are_not_cut():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10), nn.ReLU(), Mixer(), nn.ReLU(),
                           nn.Linear(12, 3))
    x = torch.randn(1, 4)
    result = spt.prune(module, x, ratio=0.5)
    reasons = list(result.report["torch"]["frozen"].values())
    assert len(reasons) == 2 and all("4.proj [10, 12] belongs to Mixer, which has no adapter" in r for r in reasons)
    assert module[4].proj.shape == (10, 12) and module[0].out_features == 4
    assert module_vs_onnx(module, (x,), result.model) < 1e-4
