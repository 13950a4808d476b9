"""Write a Llama-style decoder of a chosen size straight with onnx helpers (no torch), weights as external data.

    python models/llama_generator.py --params 50M -o /tmp/llama50m/model.onnx [--fp16]

Token embedding (Gather), per layer: RMSNorm (decomposed, as older exporters
write it), Q/K/V/O projections with heads split by Reshape/Transpose,
scaled dot-product attention with a causal mask, SwiGLU MLP (gate, up,
down), residual adds; final RMSNorm and LM head.  Random weights from a
seeded generator.  Used by the scale tests and tools/bench_scale.py.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int

    @property
    def params(self) -> int:
        per_layer = 4 * self.hidden ** 2 + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden

    @classmethod
    def for_params(cls, target: float) -> "LlamaShape":
        """A plausible shape (head dim 64, MLP 8/3 wide, vocab 32000) near *target* parameters."""
        for hidden in (256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096):
            shape = cls(hidden, 1, hidden // 64, int(hidden * 8 / 3) // 64 * 64, 32000 if hidden >= 1024 else 8000)
            per_layer = shape.params - 2 * shape.vocab * hidden
            layers = max(1, round((target - 2 * shape.vocab * hidden) / per_layer))
            if layers <= 4 * hidden // 64:
                shape.layers = layers
                return shape
        return shape


class WeightFile:
    """Appends weight matrices to an external-data file as they are generated (memory: one matrix)."""

    ALIGN = 4096

    def __init__(self, path: str):
        self.location = os.path.basename(path)
        self.handle = open(path, "wb")

    def add(self, name: str, values: np.ndarray) -> onnx.TensorProto:
        offset = -(-self.handle.tell() // self.ALIGN) * self.ALIGN
        self.handle.seek(offset)
        self.handle.write(np.ascontiguousarray(values).tobytes())
        tensor = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(values.dtype),
                                  dims=values.shape, data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(values.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        self.handle.close()


def build(shape: LlamaShape, dtype=np.float32, seed: int = 0, sink: "WeightFile | None" = None) -> onnx.ModelProto:
    """The decoder as a ModelProto; with *sink*, weight matrices go straight to its file (external data)."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    d, h, hd = shape.hidden, shape.heads, shape.hidden // shape.heads
    nodes, inits = [], []

    def weight(name, rows, cols):
        values = (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))).astype(dtype)
        inits.append(sink.add(name, values) if sink else numpy_helper.from_array(values, name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def rmsnorm(x, prefix):
        g = const(f"{prefix}.weight", np.ones(d, dtype))
        sq = node("Mul", [x, x], f"{prefix}/sq")
        mean = node("ReduceMean", [sq], f"{prefix}/mean", keepdims=1, axes=[-1])  # opset 17: axes attribute
        eps = node("Add", [mean, const(f"{prefix}/eps", np.array(1e-6, dtype))], f"{prefix}/eps_add")
        inv = node("Reciprocal", [node("Sqrt", [eps], f"{prefix}/sqrt")], f"{prefix}/inv")
        return node("Mul", [node("Mul", [x, inv], f"{prefix}/normed"), g], f"{prefix}/out")

    split = const("shape/split_heads", np.array([0, 0, h, hd], np.int64))
    merge = const("shape/merge_heads", np.array([0, 0, d], np.int64))
    scale = const("attn/scale", np.array(1 / np.sqrt(hd), dtype))
    x = node("Gather", [weight("embed_tokens", shape.vocab, d), "input_ids"], "embed")
    for i in range(shape.layers):
        p = f"layers.{i}"
        n = rmsnorm(x, f"{p}/input_norm")
        heads = {}
        for proj in ("q", "k", "v"):
            t = node("MatMul", [n, weight(f"{p}.{proj}_proj", d, d)], f"{p}/{proj}")
            t = node("Reshape", [t, split], f"{p}/{proj}_split")
            heads[proj] = node("Transpose", [t], f"{p}/{proj}_heads", perm=[0, 2, 1, 3])
        kt = node("Transpose", [heads["k"]], f"{p}/k_t", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [heads["q"], kt], f"{p}/qk"), scale], f"{p}/scores")
        probs = node("Softmax", [node("Add", [scores, "causal_mask"], f"{p}/masked")], f"{p}/probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, heads["v"]], f"{p}/ctx")], f"{p}/ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge], f"{p}/ctx_merged")
        x = node("Add", [x, node("MatMul", [ctx, weight(f"{p}.o_proj", d, d)], f"{p}/o")], f"{p}/attn_res")
        n = rmsnorm(x, f"{p}/post_norm")
        gate = node("MatMul", [n, weight(f"{p}.gate_proj", d, shape.intermediate)], f"{p}/gate")
        up = node("MatMul", [n, weight(f"{p}.up_proj", d, shape.intermediate)], f"{p}/up")
        silu = node("Mul", [gate, node("Sigmoid", [gate], f"{p}/gate_sig")], f"{p}/silu")
        down = node("MatMul", [node("Mul", [silu, up], f"{p}/swiglu"), weight(f"{p}.down_proj", shape.intermediate, d)],
                    f"{p}/down")
        x = node("Add", [x, down], f"{p}/mlp_res")
    logits = node("MatMul", [rmsnorm(x, "norm"), weight("lm_head", d, shape.vocab)], "logits")
    # causal mask from the sequence length: -1e4 above the diagonal
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("one", np.array(1, np.int64))], "seq_len")
    ar = node("Range", [const("zero", np.array(0, np.int64)), seq, const("step", np.array(1, np.int64))], "positions")
    rows = node("Unsqueeze", [ar, const("axes1", np.array([1], np.int64))], "rows")
    cols = node("Unsqueeze", [ar, const("axes0", np.array([0], np.int64))], "cols")
    future = node("Cast", [node("Greater", [cols, rows], "future_bool")], "future", to=elem)
    node("Mul", [future, const("neg", np.array(-1e4, dtype))], "causal_mask")
    graph = helper.make_graph(nodes, "llama_like",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info(logits, elem, ["batch", "seq", shape.vocab])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="spa-llama-generator")
    model.ir_version = 8
    return model


def write(path: str, shape: LlamaShape, dtype=np.float32, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sink = WeightFile(path + ".data")  # a fresh file: weights written as generated, never all in memory
    try:
        model = build(shape, dtype, seed, sink)
    finally:
        sink.close()
    onnx.save_model(model, path)
    return path


def _parse_size(text: str) -> float:
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}
    return float(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="50M")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    shape = LlamaShape.for_params(_parse_size(args.params))
    write(args.output, shape, np.float16 if args.fp16 else np.float32)
    print(f"{shape} ~{shape.params / 1e6:.0f} M parameters -> {args.output}")


if __name__ == "__main__":
    main()
