"""Module attributes after a cut: each layer type's sizes follow its sliced tensors.

Each adapter reads the new tensor shapes (and, where the shape alone is
ambiguous, the kept indices) and sets the attributes the layer's
``forward`` and ``extra_repr`` use.  ``nn.MultiheadAttention`` cannot run
with an attention width other than its embedding width, so a cut instance
becomes a :class:`PrunedMultiheadAttention` (same parameters and state
dict, its own forward).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CompileError
from .apply import Cut
from .attention import SubtreeCuts, attention_adapter, kept_heads


def _conv(module: nn.Module, cuts: dict[str, Cut]) -> None:
    """Conv/ConvTranspose: channel counts from the weight; groups from which channels went."""
    weight = module.weight
    old = cuts["weight"].slot.shape if "weight" in cuts else tuple(weight.shape)
    groups = module.groups
    if groups > 1:
        if weight.shape[1] == old[1]:  # whole groups removed: per-group widths unchanged
            per_group = old[0] // groups
            if weight.shape[0] % per_group:
                raise CompileError(f"torch: {type(module).__name__} keeps {weight.shape[0]} of {old[0]} channels, "
                                   f"not whole groups of {per_group}")
            groups = weight.shape[0] // per_group
    module.groups = groups
    if module.transposed:  # weight (in, out / groups, *kernel)
        module.in_channels, module.out_channels = weight.shape[0], weight.shape[1] * groups
    else:  # weight (out, in / groups, *kernel)
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * groups


def _linear(module: nn.Module, cuts: dict[str, Cut]) -> None:
    module.out_features, module.in_features = module.weight.shape


def _norm_features(module: nn.Module, cuts: dict[str, Cut]) -> None:
    """BatchNorm/InstanceNorm: num_features from any per-channel tensor."""
    for name in ("weight", "running_mean"):
        tensor = getattr(module, name, None)
        if tensor is not None:
            module.num_features = tensor.shape[0]
            return


def _group_norm(module: nn.Module, cuts: dict[str, Cut]) -> None:
    """GroupNorm: whole groups removed (fewer groups) or every group narrowed alike (same groups)."""
    cut = cuts.get("weight") or cuts.get("bias")
    old_channels = cut.slot.shape[0]
    per_group = old_channels // module.num_groups
    kept = cut.keep[0] if cut.keep[0] is not None else np.arange(old_channels)
    counts = np.bincount(kept // per_group, minlength=module.num_groups)
    present = counts[counts > 0]
    if (present == per_group).all():
        module.num_groups = len(present)
    elif len(present) != module.num_groups or (present != present[0]).any():
        raise CompileError(f"torch: GroupNorm keeps uneven channel counts per group ({counts.tolist()})")
    module.num_channels = len(kept)


def _layer_norm(module: nn.Module, cuts: dict[str, Cut]) -> None:
    tensor = module.weight if module.weight is not None else module.bias
    module.normalized_shape = tuple(tensor.shape)


def _embedding(module: nn.Module, cuts: dict[str, Cut]) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape


def _prelu(module: nn.Module, cuts: dict[str, Cut]) -> None:
    module.num_parameters = module.weight.numel()


def _multihead_attention(module: nn.MultiheadAttention, cuts: dict[str, Cut]) -> None:
    """Heads, head widths and embedding width from the sliced projections; the pruned forward from now on."""
    if not hasattr(module, "_spac_scale"):
        module._spac_scale = 1.0 / math.sqrt(module.head_dim)  # the graph keeps the original scaling
        module._spac_widths = (module.embed_dim, module.kdim if not module._qkv_same_embed_dim else module.embed_dim,
                               module.embed_dim)
    heads, head_dim = module.num_heads, module.head_dim
    if module._qkv_same_embed_dim:
        width = module._spac_widths[0]
        cut = cuts.get("in_proj_weight")
        shapes = [kept_heads(cut, part, width, head_dim, heads, "MultiheadAttention") for part in range(3)]
        embed = module.in_proj_weight.shape[1]
        module.kdim = module.vdim = embed
    else:
        shapes = [(heads, getattr(module, f"{p}_proj_weight").shape[0] // heads) for p in "qkv"]
        embed = module.q_proj_weight.shape[1]
        module.kdim, module.vdim = module.k_proj_weight.shape[1], module.v_proj_weight.shape[1]
    if len({h for h, _ in shapes}) != 1:
        raise CompileError(f"torch: MultiheadAttention q/k/v keep different head counts ({shapes})")
    module.num_heads = shapes[0][0]
    module.head_dim = shapes[0][1]
    module._spac_widths = tuple(h * d for h, d in shapes)
    module.embed_dim = embed
    module.__class__ = PrunedMultiheadAttention


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention width (heads x head dim) may differ from its embedding width.

    Same parameters, buffers and state-dict keys; the forward is the textbook
    one (projections, scaled dot product with the original scaling, masks,
    dropout on the weights, output projection).
    """

    _spac_scale: float
    _spac_widths: tuple[int, int, int]

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        target, batch = query.shape[0], query.shape[1]
        wq, wk, wv = (self.in_proj_weight.split(list(self._spac_widths)) if self._qkv_same_embed_dim
                      else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight))
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.split(list(self._spac_widths))
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        heads = self.num_heads
        q, k, v = (t.reshape(t.shape[0], batch * heads, t.shape[2] // heads).transpose(0, 1) for t in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(k.shape[0], 1, k.shape[2])], dim=1)
            v = torch.cat([v, v.new_zeros(v.shape[0], 1, v.shape[2])], dim=1)
            attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
        source = k.shape[1]
        scores = torch.bmm(q * self._spac_scale, k.transpose(1, 2))
        mask = _additive_mask(attn_mask, key_padding_mask, is_causal, target, source, batch, heads, scores)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(target, batch, self._spac_widths[2])
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.view(batch, heads, target, source)
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, (weights if batched else weights.squeeze(0))


def _additive_mask(attn_mask, key_padding_mask, is_causal, target, source, batch, heads, like):
    """One float mask (batch*heads, target, source) or broadcastable, from nn.MultiheadAttention's mask forms."""
    def additive(mask):
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask, float("-inf"))
        return mask.to(like.dtype)

    total = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(target, source, dtype=torch.bool, device=like.device).triu(1)
    if attn_mask is not None:
        total = additive(attn_mask)
        total = total.unsqueeze(0) if total.dim() == 2 else total
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, source).expand(batch, heads, 1, source)
        padding = padding.reshape(batch * heads, 1, source)
        total = padding if total is None else total + padding
    return total


ADAPTERS: list[tuple[type, Callable[[nn.Module, dict[str, Cut]], None]]] = [
    (nn.modules.conv._ConvNd, _conv),
    (nn.Linear, _linear),
    (nn.modules.batchnorm._BatchNorm, _norm_features),
    (nn.modules.instancenorm._InstanceNorm, _norm_features),
    (nn.GroupNorm, _group_norm),
    (nn.LayerNorm, _layer_norm),
    (nn.Embedding, _embedding),
    (nn.PReLU, _prelu),
]


def _is_timm_scale(module: nn.Module) -> bool:
    """timm's MetaFormer ``Scale`` (PoolFormer, ConvFormer): multiplies by ``scale.view(self.shape)``."""
    return (type(module).__name__ == "Scale" and type(module).__module__.startswith("timm.")
            and isinstance(getattr(module, "shape", None), tuple))


def _timm_scale(module: nn.Module, cuts: SubtreeCuts) -> None:
    module.shape = (module.scale.shape[0], *module.shape[1:])


def _subtree_adapter(module: nn.Module) -> Optional[Callable[[nn.Module, SubtreeCuts], None]]:
    """The adapter of an attention module, called with the cuts of its whole subtree (its projections' too)."""
    if isinstance(module, nn.MultiheadAttention):
        return _multihead_attention
    return _timm_scale if _is_timm_scale(module) else attention_adapter(module)


def has_adapter(module: nn.Module) -> bool:
    return any(isinstance(module, kind) for kind, _ in ADAPTERS) or _subtree_adapter(module) is not None


HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "heads")


def unadapted_owner(root: nn.Module, path: str) -> Optional[str]:
    """Why a tensor of the module at *path* must not be cut in more than one axis: the type of its owner
    when that has no adapter, or of an enclosing module with a head count no adapter follows (timm's
    CaiT, BEiT, XCiT, LeViT attention: their forwards derive head widths from C // num_heads and the like)."""
    owner = root.get_submodule(path)
    if not has_adapter(owner):
        return type(owner).__name__
    parts = path.split(".") if path else []
    for depth in range(len(parts), -1, -1):
        ancestor = root.get_submodule(".".join(parts[:depth]))
        if _head_counts(ancestor) and not has_adapter(ancestor) and not _mirrors_adapted_attention(ancestor):
            return f"{type(ancestor).__name__} (head count without an adapter)"
    return None


def _head_counts(module: nn.Module) -> set[int]:
    return {value for name in HEAD_COUNTS if isinstance(value := getattr(module, name, None), int)}


def _mirrors_adapted_attention(module: nn.Module) -> bool:
    """True when *module*'s head count is that of an attention module below it which has an adapter: a block
    that keeps the count it built its attention with (torchvision's ViT EncoderBlock, MaxViT's
    PartitionAttentionLayer: their forwards never read it), so its own tensors (the MLP's) may be cut and
    :func:`update_attributes` copies the attention's new count into it.  Were its forward to read it, the final
    module-vs-graph check would say so."""
    return bool(_mirrored_counts(module))


def _mirrored_counts(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(own head-count attribute, adapted attention below, its attribute) for every count *module* mirrors."""
    found = []
    for name in HEAD_COUNTS:
        value = getattr(module, name, None)
        if not isinstance(value, int):
            continue
        source = next(((child, other) for child in module.modules() if child is not module
                       and _subtree_adapter(child) is not None
                       for other in HEAD_COUNTS if getattr(child, other, None) == value), None)
        if source is not None:
            found.append((name, *source))
    return found


def update_attributes(root: nn.Module, cuts: dict[str, Cut]) -> list[str]:
    """Set the attributes of every module owning a cut tensor; the module types with no adapter, by path."""
    by_module: dict[str, dict[str, Cut]] = {}
    for cut in cuts.values():
        by_module.setdefault(cut.slot.module, {})[cut.slot.attr] = cut
    unknown = []
    for path, module_cuts in sorted(by_module.items()):
        module = root.get_submodule(path)
        adapter = next((fn for kind, fn in ADAPTERS if isinstance(module, kind)), None)
        if adapter is not None:
            adapter(module, module_cuts)
        elif _subtree_adapter(module) is None:
            unknown.append(f"{path or '<root>'} ({type(module).__name__})")
    mirrors = [(module, mirrored) for module in root.modules() if _subtree_adapter(module) is None
               and (mirrored := _mirrored_counts(module))]  # read before the attention adapters change the counts
    # attention: heads read off the cut projections of its subtree
    for path, module in root.named_modules():
        adapter = _subtree_adapter(module)
        prefix = _child(path, "")
        subtree = {name[len(prefix):]: cut for name, cut in cuts.items() if name.startswith(prefix)}
        if adapter is not None and subtree:
            adapter(module, subtree)
    for module, mirrored in mirrors:  # blocks that store their attention's head count copy the new one
        for name, attention, attr in mirrored:
            setattr(module, name, getattr(attention, attr))
    for module in root.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and isinstance(module.self_attn, PrunedMultiheadAttention):
            # the inference fast path calls a fused kernel with embed_dim and num_heads, bypassing our forward;
            # this attribute only selects that path (0 = never)
            module.activation_relu_or_gelu = 0
    return unknown


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
