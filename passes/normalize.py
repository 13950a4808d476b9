"""Normalization passes: bring any exporter's output to one standard form.

Each pass fixes one exporter habit that would otherwise confuse analysis or
corrupt a rewrite (initializers listed as inputs, weights in Constant nodes,
weights shared through Identity nodes, shapes computed at run time).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa_compiler.errors import ModelLoadError, first_line
from spa_compiler.ir import COPY_MARK, all_nodes, all_tensors
from spa_compiler.validate import ABSURD_TENSOR_BYTES
from spa_compiler.registry import register
from spa_compiler.shapes import infer_graph_shapes

MIN_OPSET = 7
UPGRADE_BELOW = 11
UPGRADE_TO = 13


@register("normalize", "strip_initializer_inputs", level="model")
def strip_initializer_inputs(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Drop graph inputs that are initializers (IR < 4 exporters list weights as inputs)."""
    names = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in names]
    removed = len(model.graph.input) - len(inputs)
    if removed:
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        notes.append(f"strip_initializer_inputs: {removed} initializers were listed as graph inputs")
    return model


@register("normalize", "upgrade_opset", level="model")
def upgrade_opset(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Convert models older than opset 11 to opset 13, where operands moved from attributes to inputs."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version < MIN_OPSET:
        raise ModelLoadError(f"opset {version} is too old (spa-compiler supports opset >= {MIN_OPSET})")
    if version >= UPGRADE_BELOW:
        return model
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(model, UPGRADE_TO)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        notes.append(f"upgrade_opset: kept opset {version} ({first_line(exc, 120)})")
        return model
    notes.append(f"upgrade_opset: {version} -> {UPGRADE_TO}")
    return upgraded


def constant_output(graph: gs.Graph, node: gs.Node, values: np.ndarray) -> bool:
    """Replace *node*'s single output by a constant (unless it is a graph output); True when done."""
    out = node.outputs[0]
    if out in graph.outputs:
        return False
    replace_uses(out, gs.Constant(out.name, np.asarray(values)))
    node.outputs.clear()
    return True


def finish(graph: gs.Graph, notes: list[str], message: str, count: int, reorder: bool = False) -> None:
    """Drop the nodes a pass disconnected and say what it did.

    *reorder*: the pass appended new nodes at the end of the list, so the graph is
    sorted again before the next pass walks it in order.
    """
    if count:
        graph.cleanup()
        if reorder:
            graph.toposort()
        notes.append(message.format(count=count))


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of *old* read *new* instead."""
    for consumer in list(old.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new


@register("normalize", "constants_to_initializers")
def constants_to_initializers(graph: gs.Graph, notes: list[str]) -> None:
    """Turn ``Constant`` nodes into initializers (PaddlePaddle and spox keep all weights in them)."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = node.attrs.get("value")
        if value is None:
            for key, make in (("value_float", np.float32), ("value_int", np.int64)):
                if key in node.attrs:
                    value = np.array(node.attrs[key], dtype=make)
            for key, make in (("value_floats", np.float32), ("value_ints", np.int64)):
                if key in node.attrs:
                    value = np.array(node.attrs[key], dtype=make)
        if value is None:
            continue
        if isinstance(value, gs.Constant):
            value = value.values
        count += constant_output(graph, node, value)
    finish(graph, notes, "constants_to_initializers: {count} Constant nodes", count)


@register("normalize", "castlike_constants")
def castlike_constants(graph: gs.Graph, notes: list[str]) -> None:
    """Turn ``CastLike(constant, activation)`` into a constant of the activation's dtype.

    The dynamo exporter (``optimize=False``) builds absent conv biases as
    ``Expand(CastLike(0, x), Shape(W))``; the activation is read only for its
    dtype, yet it stops constant folding and ties the bias to the data path.
    """
    count = 0
    for node in list(graph.nodes):
        if node.op != "CastLike" or len(node.inputs) != 2 or not isinstance(node.inputs[0], gs.Constant):
            continue
        like = node.inputs[1]
        dtype = like.values.dtype if isinstance(like, gs.Constant) else like.dtype
        if dtype is None:
            continue
        try:
            np_dtype = np.dtype(dtype) if not isinstance(dtype, int) else \
                onnx.helper.tensor_dtype_to_np_dtype(dtype)
        except TypeError:
            continue
        count += constant_output(graph, node, np.asarray(node.inputs[0].values).astype(np_dtype))
    finish(graph, notes, "castlike_constants: {count} CastLike of constants", count)


@register("normalize", "lower_ml_scaler")
def lower_ml_scaler(graph: gs.Graph, notes: list[str]) -> None:
    """Lower ``ai.onnx.ml.Scaler`` (``Y = (X - offset) * scale``, float output) to Cast/Sub/Mul.

    skl2onnx writes every StandardScaler (and PCA's centering) as a Scaler; an
    ml-domain op has no rule and no ONNX shape inference, so it froze the whole
    MLP after it.  Sub and Mul by constants are plain elementwise ops.
    """
    count = 0
    for node in list(graph.nodes):
        if node.op != "Scaler" or node.domain != "ai.onnx.ml" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        x, out = node.inputs[0], node.outputs[0]
        base = node.name or out.name
        if x.dtype is not None and np.dtype(x.dtype) != np.float32:
            cast = gs.Variable(f"{base}_as_float", dtype=np.float32)
            graph.nodes.append(gs.Node("Cast", name=f"{base}_cast", attrs={"to": onnx.TensorProto.FLOAT},
                                       inputs=[x], outputs=[cast]))
            x = cast
        offset = np.asarray(node.attrs.get("offset", [0.0]), dtype=np.float32)
        scale = np.asarray(node.attrs.get("scale", [1.0]), dtype=np.float32)
        centered = gs.Variable(f"{base}_centered", dtype=np.float32)
        graph.nodes.append(gs.Node("Sub", name=f"{base}_sub", outputs=[centered],
                                   inputs=[x, gs.Constant(f"{base}_offset", offset)]))
        graph.nodes.append(gs.Node("Mul", name=f"{base}_mul", outputs=[out],
                                   inputs=[centered, gs.Constant(f"{base}_scale", scale)]))
        node.inputs.clear()
        node.outputs.clear()
        count += 1
    finish(graph, notes, "lower_ml_scaler: {count} ai.onnx.ml Scaler nodes", count, reorder=True)


@register("normalize", "group_norm_as_split")
def group_norm_as_split(graph: gs.Graph, notes: list[str]) -> None:
    """Make PyTorch's exported GroupNorm reshape split the channels instead of mixing them with space.

    ``torch.onnx`` writes GroupNorm as ``Reshape(x, [0, G, -1])`` ->
    ``InstanceNormalization`` -> ``Reshape(back to x's shape)``, which merges
    each group's channels with the spatial axes: no rule can follow a channel
    through that.  Reshaping to ``[N, G, C/G, H, W]`` instead gives the
    InstanceNormalization the same statistics (it normalizes every axis after
    the second), and the Reshape becomes a plain split of the channel axis
    (ties each channel to its group: whole groups are the atoms).
    """
    count = 0
    for node in list(graph.nodes):
        if node.op != "Reshape" or len(node.inputs) != 2 or not isinstance(node.inputs[1], gs.Constant):
            continue
        x, target = node.inputs[0], np.asarray(node.inputs[1].values).tolist()
        shape = x.shape
        if shape is None or len(shape) < 3 or len(target) != 3 or target[0] != 0 or target[2] != -1 or \
                not all(isinstance(d, (int, np.integer)) for d in shape[1:]):
            continue
        groups, channels = int(target[1]), int(shape[1])
        readers = node.outputs[0].outputs
        if groups <= 0 or channels % groups or node.outputs[0] in graph.outputs or \
                not readers or any(r.op != "InstanceNormalization" for r in readers):
            continue
        split = np.array([0, groups, channels // groups, *[int(d) for d in shape[2:]]], np.int64)
        node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_as_split", split)
        node.outputs[0].shape = None
        count += 1
    if count:
        notes.append(f"group_norm_as_split: {count} GroupNorm reshapes")


@register("normalize", "sequence_split_to_split")
def sequence_split_to_split(graph: gs.Graph, notes: list[str]) -> None:
    """``SplitToSequence`` read only by ``SequenceAt`` at constant positions becomes a plain ``Split``.

    The dynamo exporter writes ``torch.chunk`` this way (ShuffleNet); a Split
    has a rule, sequences do not.
    """
    count = 0
    for node in list(graph.nodes):
        if node.op != "SplitToSequence" or not node.attrs.get("keepdims", 1):
            continue
        seq = node.outputs[0]
        readers = list(seq.outputs)
        if seq in graph.outputs or not readers or any(
                r.op != "SequenceAt" or not isinstance(r.inputs[1], gs.Constant) for r in readers):
            continue
        x = node.inputs[0]
        axis = int(node.attrs.get("axis", 0))
        split = node.inputs[1].values if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant) else None
        dim = x.shape[axis] if x.shape is not None and axis < len(x.shape) else None
        if split is None or not isinstance(dim, (int, np.integer)):
            continue
        split = np.asarray(split).astype(np.int64)
        sizes = split if split.ndim == 1 else np.array(
            [int(split)] * (dim // int(split)) + ([dim % int(split)] if dim % int(split) else []), np.int64)
        outs = [gs.Variable(f"{seq.name}_part{i}", dtype=x.dtype) for i in range(len(sizes))]
        graph.nodes.append(gs.Node("Split", name=f"{node.name}_as_split", attrs={"axis": axis},
                                   inputs=[x, gs.Constant(f"{seq.name}_sizes", sizes)], outputs=outs))
        for reader in readers:
            position = int(np.asarray(reader.inputs[1].values))
            replace_uses(reader.outputs[0], outs[position])
            reader.outputs.clear()
        node.outputs.clear()
        count += 1
    finish(graph, notes, "sequence_split_to_split: {count} SplitToSequence nodes", count, reorder=True)


@register("normalize", "einsum_to_matmul")
def einsum_to_matmul(graph: gs.Graph, notes: list[str]) -> None:
    """Rewrite two-operand Einsums that are batched matrix products as Transpose + MatMul.

    ``bhqd,bhkd->bhqk`` (attention scores written as einsum) becomes
    ``MatMul(A, Transpose(B))``, which the MatMul rule understands.
    """
    count = 0
    for node in list(graph.nodes):
        if node.op != "Einsum" or len(node.inputs) != 2 or "..." in node.attrs.get("equation", "..."):
            continue
        plan = _einsum_as_matmul(node.attrs["equation"].replace(" ", ""))
        if plan is None:
            continue
        base = node.name or node.outputs[0].name
        operands = []
        for tensor, perm in zip(node.inputs, plan):
            if perm is None:
                operands.append(tensor)
                continue
            moved = gs.Variable(f"{base}_{tensor.name}_t", dtype=tensor.dtype)
            graph.nodes.append(gs.Node("Transpose", name=f"{moved.name}_node", attrs={"perm": perm},
                                       inputs=[tensor], outputs=[moved]))
            operands.append(moved)
        graph.nodes.append(gs.Node("MatMul", name=f"{base}_as_matmul", inputs=operands,
                                   outputs=list(node.outputs)))
        node.outputs.clear()
        count += 1
    finish(graph, notes, "einsum_to_matmul: {count} Einsum nodes", count, reorder=True)


def _einsum_as_matmul(equation: str):
    """Permutations (or None) that bring both operands to ``batch..., m, k`` x ``batch..., k, n``."""
    try:
        lhs, out = equation.split("->")
        a, b = lhs.split(",")
    except ValueError:
        return None
    if len(set(a)) != len(a) or len(set(b)) != len(b) or len(out) < 2:
        return None
    batch, m, n = out[:-2], out[-2], out[-1]
    contracted = [c for c in a if c in b and c not in out]
    if len(contracted) != 1 or set(a) != set(batch) | {m, contracted[0]} or \
            set(b) != set(batch) | {n, contracted[0]} or m in b or n in a:
        return None
    k = contracted[0]
    want_a, want_b = batch + m + k, batch + k + n
    perm_a = None if a == want_a else [a.index(c) for c in want_a]
    perm_b = None if b == want_b else [b.index(c) for c in want_b]
    return perm_a, perm_b


@register("normalize", "remove_identity")
def remove_identity(graph: gs.Graph, notes: list[str]) -> None:
    """Bypass Identity nodes (TorchScript shares deduplicated weights through them)."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        src, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs or src in graph.outputs:
            continue
        replace_uses(out, src)
        node.inputs.clear()
        node.outputs.clear()
        count += 1
    finish(graph, notes, "remove_identity: {count} Identity nodes", count)


def _np_transpose(node, x):
    perm = node.attrs.get("perm")
    return np.transpose(x, perm) if perm is not None else np.transpose(x)


def _np_axes(node, arrays):
    axes = node.attrs.get("axes")
    if axes is None and len(arrays) > 1:
        axes = arrays[1].tolist()
    return [int(a) for a in np.atleast_1d(axes)] if axes is not None else None


def _np_unsqueeze(node, *arrays):
    out = arrays[0]
    axes = _np_axes(node, arrays)
    for a in sorted(a + out.ndim + len(axes) if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return out


def _np_squeeze(node, *arrays):
    axes = _np_axes(node, arrays)
    return np.squeeze(arrays[0], axis=tuple(axes)) if axes is not None else np.squeeze(arrays[0])


def _np_reshape(node, x, shape):
    shape = [x.shape[i] if d == 0 and not node.attrs.get("allowzero", 0) else int(d) for i, d in enumerate(shape)]
    return np.reshape(x, shape)


_NUMPY_FOLDS = {
    "Transpose": _np_transpose,
    "Reshape": _np_reshape,
    "Unsqueeze": _np_unsqueeze,
    "Squeeze": _np_squeeze,
    "Cast": lambda node, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))),
    "Neg": lambda node, x: -x,
}


@register("normalize", "fold_weight_layouts")
def fold_weight_layouts(graph: gs.Graph, notes: list[str]) -> None:
    """Fold layout ops on constant weights (Transpose of a Linear weight, Cast, Reshape) with numpy.

    Exporters without constant folding leave ``Transpose(W)`` before every
    MatMul; doing these in numpy here spares the general folder (which runs
    onnxruntime on serialized constants) most of its work on large models.
    """
    count = 0
    for node in list(graph.nodes):
        fold = _NUMPY_FOLDS.get(node.op)
        if fold is None or len(node.outputs) != 1:
            continue
        if not node.inputs or not all(isinstance(t, gs.Constant) for t in node.inputs):
            continue
        try:
            # np.array, not np.ascontiguousarray: the latter turns 0-d results into 1-d ones
            value = np.array(fold(node, *[np.asarray(t.values) for t in node.inputs]), order="C")
        except Exception:  # noqa: BLE001 - leave anything unusual to the general folder
            continue
        count += constant_output(graph, node, value)
    finish(graph, notes, "fold_weight_layouts: {count} layout ops on constants", count)


@register("normalize", "fold_constants")
def fold_constants(graph: gs.Graph, notes: list[str]) -> None:
    """Fold constant subgraphs and static Shape chains so shape constants become rewritable."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # gs folds with onnxruntime; its optimizer warnings are noise
    start = len(graph.nodes)
    for _ in range(MAX_FOLD_ROUNDS):  # folding reveals shapes, shapes reveal more folds
        refuse_absurd_shapes(graph, notes)  # folding computes tensors: never one that cannot fit
        before = len(graph.nodes)
        graph.fold_constants(fold_shapes=True, error_ok=True, size_threshold=64 * 1024 * 1024)
        graph.cleanup()
        if len(graph.nodes) == before:
            break
        infer_shapes(graph, [])
    if len(graph.nodes) != start:
        notes.append(f"fold_constants: {start - len(graph.nodes)} nodes folded")


MAX_FOLD_ROUNDS = 32


@register("normalize", "refuse_absurd_shapes")
def refuse_absurd_shapes(graph: gs.Graph, notes: list[str]) -> None:
    """Refuse a model whose statically known intermediate shapes would need an absurd allocation.

    A ConstantOfShape, Expand or Tile of constants declaring hundreds of GB
    would be computed by constant folding (and by the verification run)
    before anything failed; here it is one clear error instead.
    """
    for tensor in graph.tensors().values():
        shape = tensor.shape if isinstance(tensor, gs.Variable) else None
        if not shape or tensor.dtype is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            continue
        size = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(tensor.dtype).itemsize
        if size > ABSURD_TENSOR_BYTES:
            producer = tensor.inputs[0] if tensor.inputs else None
            where = f" (output of {producer.name or '<unnamed>'} ({producer.op}))" if producer else ""
            raise ModelLoadError(f"tensor {tensor.name}{where} would take {size / 2**30:.3g} GiB "
                                 f"(shape {list(shape)}); refused before allocating")


@register("normalize", "refuse_inconsistent_weights")
def refuse_inconsistent_weights(graph: gs.Graph, notes: list[str]) -> None:
    """Refuse layers whose constant weight has the wrong rank or disagrees with the known width of their input.

    Such a model cannot run; without this check the disagreement surfaces
    while analysing, scoring or slicing as an internal error instead of naming the node.
    """
    for node in graph.nodes:
        problem = _weight_problem(node)
        if problem:
            raise ModelLoadError(f"node {node.name or '<unnamed>'} ({node.op}): {problem}")


_WEIGHT_RANKS = {"Conv": 3, "ConvTranspose": 3, "Gemm": 2}  # the least rank each op's weight must have


def _weight_problem(node: gs.Node):
    """Why the constant weight of a Conv/ConvTranspose/Gemm/MatMul cannot fit its input, else None."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant) or node.inputs[0] is None:
        return None
    weight = node.inputs[1]
    w, x = list(weight.shape or []), node.inputs[0].shape
    least = _WEIGHT_RANKS.get(node.op)
    if least is not None and (len(w) < least or (node.op == "Gemm" and len(w) != 2)):
        return f"weight {weight.name} has rank {len(w)}, the op needs {'2' if node.op == 'Gemm' else '3 or more'}"
    if not x or not w:
        return None
    if node.op in ("Conv", "ConvTranspose") and len(x) != len(w):
        return f"input rank {len(x)} differs from weight {weight.name}'s rank {len(w)}"
    if node.op == "Conv":
        group = node.attrs.get("group", 1)
        if not isinstance(group, int) or group < 1 or w[0] % group:
            return f"group {group} does not divide weight {weight.name}'s {w[0]} output channels"
        have, want = x[1], w[1] * group
    elif node.op == "ConvTranspose":
        have, want = x[1], w[0]
    elif node.op == "Gemm" and len(x) == 2:
        have, want = x[0 if node.attrs.get("transA", 0) else 1], w[1 if node.attrs.get("transB", 0) else 0]
    elif node.op == "MatMul" and len(w) >= 2:
        have, want = x[-1], w[-2]
    else:
        return None
    known = all(isinstance(v, (int, np.integer)) and v > 0 for v in (have, want))
    if known and have != want:
        return f"its input has {have} channels, its weight {weight.name} expects {want}"
    return None


@register("normalize", "unshare_initializers")
def unshare_initializers(graph: gs.Graph, notes: list[str]) -> None:
    """Give every use of a shared non-scalar constant its own copy, so one layer's cut never hits another."""
    uses: dict[int, list[tuple[gs.Node, int]]] = defaultdict(list)
    tensors: dict[int, gs.Constant] = {}
    for node in all_nodes(graph):  # a weight read inside a subgraph and outside it is shared too
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                uses[id(tensor)].append((node, i))
                tensors[id(tensor)] = tensor
    taken = set(all_tensors(graph).keys())
    count = 0
    for key, sites in uses.items():
        const = tensors[key]
        if len(sites) < 2 or np.prod(const.shape) <= 1:
            continue
        for k, (node, i) in enumerate(sites[1:], start=1):
            name = f"{const.name}{COPY_MARK}{k}"
            while name in taken:
                name += "_"
            taken.add(name)
            node.inputs[i] = gs.Constant(name, np.array(const.values, copy=True))
            count += 1
    if count:
        notes.append(f"unshare_initializers: {count} shared uses copied")


@register("normalize", "cleanup")
def cleanup(graph: gs.Graph, notes: list[str]) -> None:
    """Remove dead nodes and sort topologically."""
    graph.cleanup().toposort()


@register("normalize", "infer_shapes")
def infer_shapes(graph: gs.Graph, notes: list[str]) -> None:
    """ONNX shape inference with data propagation, run on a weightless copy of the graph.

    Large constants become typed graph inputs in the copy, so inference never
    serializes the weights (seconds on a VGG, minutes on a multi-GB model);
    the inferred shapes are written back onto the graph's variables.  Only
    shapes ONNX proves are used here, because constant folding trusts them.
    """
    infer_graph_shapes(graph, notes, symbolic=False)


@register("normalize", "infer_shapes_symbolic")
def infer_shapes_symbolic(graph: gs.Graph, notes: list[str]) -> None:
    """Shape inference plus onnxruntime's symbolic inference where ONNX leaves dims unknown (for analysis only)."""
    infer_graph_shapes(graph, notes, symbolic=True)
