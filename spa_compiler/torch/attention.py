"""Attention modules of torchvision, timm and Hugging Face: their head counts follow the cut projections.

The graph removes whole heads (rows of the query/key/value projections,
columns of the output projection, a head's column of a relative position
bias table); the module's ``forward`` reshapes with a head count attribute
nobody else updates.  Each adapter here reads the kept heads off the cut
projection rows and sets that attribute.  Where the library's forward
hard-codes the attention width to the embedding width (torchvision's
``ShiftedWindowAttention``: ``C // num_heads``), the instance becomes a
subclass with a forward that takes the width from its tensors.

An adapter is called with the cuts of the attention module's whole
subtree, keyed by tensor name relative to it (``qkv.weight``,
``relative_position_bias_table``).
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

SubtreeCuts = dict[str, Cut]  # tensor name relative to the attention module -> its cut


def kept_heads(cut: Optional[Cut], part: int, width: int, head_dim: int, heads: int, owner: str) -> tuple[int, int]:
    """(heads, head dim) left of one of q/k/v (rows [part*width, (part+1)*width) of a projection) after *cut*."""
    kept = np.arange(part * width, (part + 1) * width) if cut is None or cut.keep[0] is None else cut.keep[0]
    local = kept[(kept >= part * width) & (kept < (part + 1) * width)] - part * width
    counts = np.bincount(local // head_dim, minlength=heads)
    present = counts[counts > 0]
    if (present == head_dim).all():
        return len(present), head_dim
    if len(present) == heads and (present == present[0]).all():
        return heads, int(present[0])
    raise CompileError(f"torch: {owner} keeps uneven widths per head ({counts.tolist()})")


def _whole_heads(cut: Cut, parts: int, heads: int, owner: str) -> int:
    """Heads left in a projection of *parts* (q, k, v) x heads x head dim rows; only whole heads may go."""
    head_dim = cut.slot.shape[0] // (parts * heads)
    shapes = {kept_heads(cut, part, heads * head_dim, head_dim, heads, owner) for part in range(parts)}
    if len(shapes) != 1 or next(iter(shapes))[1] != head_dim:
        raise CompileError(f"torch: {owner} keeps {sorted(shapes)} (heads, head dim) for its projections; only "
                           "whole heads can be removed from it")
    return next(iter(shapes))[0]


def _from(module: nn.Module, package: str) -> bool:
    return type(module).__module__.split(".")[0] == package


# timm: one fused ``qkv`` Linear and ``num_heads``; these classes' forwards reshape with num_heads and head_dim
# (unchanged when whole heads go) or -1.  Others (CaiT's, BEiT's, XCiT's: C // num_heads) have no adapter.
TIMM_FUSED = {"timm.layers.attention": ("Attention",), "timm.models.swin_transformer": ("WindowAttention",),
              "timm.models.vision_transformer": ("Attention",)}


def _is_timm_fused(module: nn.Module) -> bool:
    kind = type(module)
    return (kind.__name__ in TIMM_FUSED.get(kind.__module__, ()) and isinstance(getattr(module, "qkv", None), nn.Linear)
            and isinstance(getattr(module, "num_heads", None), int))


def _timm_fused(module: nn.Module, cuts: SubtreeCuts) -> None:
    cut = cuts.get("qkv.weight")
    if cut is None:  # heads go with their qkv rows: no qkv cut, no change of heads
        return
    head_dim = cut.slot.shape[0] // (3 * module.num_heads)
    module.num_heads = _whole_heads(cut, 3, module.num_heads, type(module).__name__)
    if isinstance(getattr(module, "attn_dim", None), int):
        module.attn_dim = module.num_heads * head_dim


# Hugging Face: separate query/key/value (or q_proj/k_proj/v_proj) Linears, ``num_attention_heads`` and a head
# size (``attention_head_size`` or ``head_dim``); the forwards view with (-1, head size) and reshape to -1, so only
# the attributes other code reads (``all_head_size``, ``prune_heads``) are stale.

_HF_QUERY = ("query", "q_proj")


def _is_hf_attention(module: nn.Module) -> bool:
    return (_from(module, "transformers") and isinstance(getattr(module, "num_attention_heads", None), int)
            and any(isinstance(getattr(module, name, None), nn.Linear) for name in _HF_QUERY))


def _hf_attention(module: nn.Module, cuts: SubtreeCuts) -> None:
    cut = next((cuts[f"{name}.weight"] for name in _HF_QUERY if f"{name}.weight" in cuts), None)
    if cut is None:
        return
    head_dim = cut.slot.shape[0] // module.num_attention_heads
    module.num_attention_heads = _whole_heads(cut, 1, module.num_attention_heads, type(module).__name__)
    if isinstance(getattr(module, "all_head_size", None), int):
        module.all_head_size = module.num_attention_heads * head_dim


def _is_hf_position_bias(module: nn.Module) -> bool:
    """Hugging Face relative position bias tables (rows: positions, columns: heads) read back with view(..., -1)."""
    return _from(module, "transformers") and type(module).__name__ == "SwinRelativePositionBias"


# torchvision: ShiftedWindowAttention(V2) passes C // num_heads (C: the input width) as the head width to
# shifted_window_attention, so a pruned instance gets a forward that takes the widths from its tensors.

def _is_torchvision_swin(module: nn.Module) -> bool:
    return type(module) in _PRUNED_SWIN or type(module) in _PRUNED_SWIN.values()


def _torchvision_swin(module: nn.Module, cuts: SubtreeCuts) -> None:
    cut = cuts.get("qkv.weight")
    if not hasattr(module, "_spac_scale"):  # the graph keeps the original 1/sqrt(head width)
        rows = cut.slot.shape[0] if cut is not None else module.qkv.weight.shape[0]
        module._spac_scale = (rows // 3 // module.num_heads) ** -0.5
    if cut is not None:
        module.num_heads = _whole_heads(cut, 3, module.num_heads, type(module).__name__)
    module.__class__ = _PRUNED_SWIN.get(type(module), type(module))


def _shift_mask(like: torch.Tensor, padded: tuple[int, int], window: list[int], shift: list[int]) -> torch.Tensor:
    """torchvision's shifted-window attention mask: -100 between tokens from different regions, (windows, N, N)."""
    (ph, pw), (wh, ww) = padded, window
    mask = like.new_zeros((ph, pw))
    count = 0
    for h in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
        for w in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    mask = mask.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _swin_forward(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` with the widths of the cut tensors (x: B, H, W, C)."""
    logit_scale = getattr(self, "logit_scale", None)  # V2: cosine attention
    bias = self.get_relative_position_bias()
    batch, height, width, channels = x.shape
    (wh, ww), heads = self.window_size, self.num_heads
    x = F.pad(x, (0, 0, 0, (ww - width % ww) % ww, 0, (wh - height % wh) % wh))
    ph, pw = x.shape[1], x.shape[2]
    shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = (ph // wh) * (pw // ww)
    x = x.view(batch, ph // wh, wh, pw // ww, ww, channels).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch * windows, wh * ww, channels)
    qkv_bias = self.qkv.bias
    if logit_scale is not None and qkv_bias is not None:  # V2 keeps the key bias at zero
        length = qkv_bias.numel() // 3
        qkv_bias = torch.cat([qkv_bias[:length], torch.zeros_like(qkv_bias[length:2 * length]),
                              qkv_bias[2 * length:]])
    tokens = x.size(1)
    q, k, v = F.linear(x, self.qkv.weight, qkv_bias).reshape(x.size(0), tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * self._spac_scale).matmul(k.transpose(-2, -1))
    attn = attn + bias
    if sum(shift) > 0:
        attn = attn.view(x.size(0) // windows, windows, heads, tokens, tokens)
        attn = (attn + _shift_mask(x, (ph, pw), [wh, ww], shift).unsqueeze(1).unsqueeze(0)).view(-1, heads, tokens,
                                                                                                  tokens)
    attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), tokens, -1)
    x = F.dropout(F.linear(x, self.proj.weight, self.proj.bias), p=self.dropout, training=self.training)
    channels = x.shape[-1]
    x = x.view(batch, ph // wh, pw // ww, wh, ww, channels).permute(0, 1, 3, 2, 4, 5).reshape(batch, ph, pw, channels)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


try:
    from torchvision.models import swin_transformer as _tv_swin
except ImportError:  # torchvision is optional: no torchvision module to adapt then
    _PRUNED_SWIN: dict[type, type] = {}
else:
    class PrunedShiftedWindowAttention(_tv_swin.ShiftedWindowAttention):
        """torchvision ``ShiftedWindowAttention`` whose attention width (heads x head dim) follows its tensors."""

        _spac_scale: float
        forward = _swin_forward

    class PrunedShiftedWindowAttentionV2(_tv_swin.ShiftedWindowAttentionV2):
        """torchvision ``ShiftedWindowAttentionV2`` whose attention width follows its tensors."""

        forward = _swin_forward

    _PRUNED_SWIN = {_tv_swin.ShiftedWindowAttention: PrunedShiftedWindowAttention,
                    _tv_swin.ShiftedWindowAttentionV2: PrunedShiftedWindowAttentionV2}


# torchvision MaxViT: RelativePositionalMultiHeadAttention reshapes q, k, v with n_heads and head_dim (head_dim
# unchanged when whole heads go) but its output back to its input width, so a cut instance gets a forward that
# reshapes to -1.  Its ``torch.chunk(qkv, 3)`` splits whatever width it gets in thirds, which follows the cut: the
# group removes the same heads from q, k and v.  Its bias table is (positions, heads), read back with view(..., -1).

def _is_torchvision_maxvit(module: nn.Module) -> bool:
    return type(module) in _PRUNED_MAXVIT or type(module) in _PRUNED_MAXVIT.values()


def _torchvision_maxvit(module: nn.Module, cuts: SubtreeCuts) -> None:
    cut = cuts.get("to_qkv.weight")
    if cut is not None:
        module.n_heads = _whole_heads(cut, 3, module.n_heads, type(module).__name__)
    module.__class__ = _PRUNED_MAXVIT.get(type(module), type(module))


def _maxvit_forward(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``RelativePositionalMultiHeadAttention.forward`` with the attention width of its tensors."""
    batch, groups, tokens, _ = x.shape
    q, k, v = (t.reshape(batch, groups, tokens, self.n_heads, self.head_dim).permute(0, 1, 3, 2, 4)
               for t in torch.chunk(self.to_qkv(x), 3, dim=-1))
    scores = torch.einsum("bghid,bghjd->bghij", q, k * self.scale_factor) + self.get_relative_positional_bias()
    out = torch.einsum("bghij,bghjd->bghid", F.softmax(scores, dim=-1), v)
    return self.merge(out.permute(0, 1, 3, 2, 4).reshape(batch, groups, tokens, -1))


try:
    from torchvision.models import maxvit as _tv_maxvit
except ImportError:
    _tv_maxvit = None
    _PRUNED_MAXVIT: dict[type, type] = {}
else:
    class PrunedRelativePositionalMultiHeadAttention(_tv_maxvit.RelativePositionalMultiHeadAttention):
        """torchvision MaxViT attention whose attention width (heads x head dim) follows its tensors."""

        forward = _maxvit_forward

    _PRUNED_MAXVIT = {_tv_maxvit.RelativePositionalMultiHeadAttention: PrunedRelativePositionalMultiHeadAttention}


def splits_in_proportion(module: nn.Module) -> bool:
    """True for modules whose forward splits a tensor into equal parts of whatever width it has (``chunk``), so a
    cut that removes the same heads from every part is followed (MaxViT's q, k, v)."""
    return _is_torchvision_maxvit(module)


def _reads_heads_from_its_table(module: nn.Module, cuts: SubtreeCuts) -> None:
    """Nothing to set: the module reads the head count off its table's shape."""


# (matches, adapter): called once per matching module whose subtree lost elements.
ATTENTION_ADAPTERS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module, SubtreeCuts], None]]] = [
    (_is_timm_fused, _timm_fused),
    (_is_hf_attention, _hf_attention),
    (_is_hf_position_bias, _reads_heads_from_its_table),
    (_is_torchvision_swin, _torchvision_swin),
    (_is_torchvision_maxvit, _torchvision_maxvit),
]


def attention_adapter(module: nn.Module) -> Optional[Callable[[nn.Module, SubtreeCuts], None]]:
    return next((adapt for matches, adapt in ATTENTION_ADAPTERS if matches(module)), None)
