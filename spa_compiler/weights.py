"""Weights that stay on disk: external initializers mapped lazily, pages handed back, output streamed.

Why a module of its own: a 3B-parameter model is 6 GB in fp16.  Loading its
external data into the protobuf, then into numpy, then slicing it and
serializing it again holds four to six copies.  Here instead:

* an external initializer becomes a :class:`MappedValues` (a gs ``LazyValues``):
  its values are a read-only view of one memory map per data file, made on
  first use and never copied;
* :func:`release_pages` hands the mapped pages back to the kernel
  (``MADV_DONTNEED``; they stay in the page cache) after each pass step, so
  resident memory holds only what the rewrite actually keeps;
* :func:`stream_weights` writes the output's data file tensor by tensor
  (unchanged tensors are copied file to file, rewritten ones written and
  dropped) and swaps every written constant for a mapped view of the new file,
  so exporting the graph afterwards produces a proto of a few megabytes.

The views are read-only on purpose: a pass that edits a weight in place
would otherwise change the user's file through a shared map.
"""
from __future__ import annotations

import mmap
import os
import weakref
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import ModelLoadError

# Tensor offsets in written data files: onnxruntime maps tensors whose offset is a multiple of
# the allocation granularity (64 KiB on Windows) instead of copying them.
ALIGNMENT = 65536
# Tensors smaller than this stay inside the protobuf (shape constants, biases, norms).
EXTERNAL_MIN_BYTES = 1024
_COPY_CHUNK = 64 * 2**20

# ONNX element types whose raw little-endian bytes are exactly a numpy array.
_PLAIN = {t: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)).newbyteorder("<") for t in (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8,
    onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL)}

# One read-only map per data file, shared by every view into it; gone when the last view is.
_MAPS: "weakref.WeakValueDictionary[tuple, mmap.mmap]" = weakref.WeakValueDictionary()


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


class MappedValues(LazyValues):
    """An initializer's values in a file region: mapped on first use, never read into the heap."""

    def __init__(self, tensor: onnx.TensorProto, path: Path):
        super().__init__(tensor)
        info = external_info(tensor)
        self.path = Path(path)
        self.offset = int(info.get("offset", 0))
        self.np_dtype = _PLAIN[tensor.data_type]
        self.length = int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize
        if "length" in info and int(info["length"]) != self.length:
            raise ModelLoadError(f"initializer {tensor.name}: external data length {info['length']} does not "
                                 f"match its shape {list(self.shape)} ({self.length} bytes)")

    def load(self) -> np.ndarray:
        if self.length == 0:
            return np.zeros(self.shape, self.np_dtype)
        mapped = _map(self.path)
        if self.offset + self.length > len(mapped):
            raise ModelLoadError(f"initializer {self.tensor.name}: external data ends at byte "
                                 f"{self.offset + self.length}, past the end of {self.path} ({len(mapped)} bytes)")
        count = self.length // self.np_dtype.itemsize
        return np.frombuffer(mapped, self.np_dtype, count, self.offset).reshape(self.shape)


def _map(path: Path) -> mmap.mmap:
    stat = path.stat()
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    mapped = _MAPS.get(key)
    if mapped is None:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        _MAPS[key] = mapped
    return mapped


def release_pages() -> None:
    """Drop every mapped page from this process's resident set (re-read from the page cache on next use)."""
    for mapped in list(_MAPS.values()):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):  # closed map, or a platform without madvise
            pass


def resolve_locations(model: onnx.ModelProto, folder: Path) -> int:
    """Point every external initializer at its absolute file (after the caller checked it stays in *folder*).

    The proto then describes where each tensor lives on its own, whoever
    imports it; returns how many tensors are external.
    """
    count = 0
    for tensor in _all_initializers(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = str((folder / entry.value).resolve())
            count += 1
    return count


def _all_initializers(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    yield from _get_all_tensors(model)


def map_external(graph: gs.Graph) -> int:
    """Make every external constant of *graph* (subgraphs included) a :class:`MappedValues`; returns the count.

    Element types numpy cannot view directly (bfloat16, float8, strings) are
    read into the protobuf instead: rare, and small in practice.
    """
    count = 0
    for const in _constants(graph):
        lazy = const._values
        if type(lazy) is not LazyValues or not isinstance(lazy.tensor, onnx.TensorProto):
            continue
        tensor = lazy.tensor
        if not uses_external_data(tensor):
            continue
        location = Path(external_info(tensor).get("location", ""))
        if tensor.data_type in _PLAIN:
            const._values = MappedValues(tensor, location)
        else:
            from onnx.external_data_helper import load_external_data_for_tensor

            load_external_data_for_tensor(tensor, str(location.parent))
        count += 1
    return count


def _constants(graph: gs.Graph) -> list[gs.Constant]:
    """Every constant of *graph* and its subgraphs, in a stable order (node order, then inputs order)."""
    seen: dict[int, gs.Constant] = {}
    for g in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant):
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def embed_external(model: onnx.ModelProto) -> None:
    """Read every external initializer of *model* into its protobuf (for in-memory use: runtimes, checkers)."""
    for tensor in _all_initializers(model):
        if not uses_external_data(tensor):
            continue
        if tensor.data_type in _PLAIN:
            tensor.raw_data = tensor_array(tensor).tobytes()
        else:
            from onnx.external_data_helper import load_external_data_for_tensor

            load_external_data_for_tensor(tensor, "")
            continue
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """An initializer's values, external ones (absolute location, see :func:`resolve_locations`) mapped
    read-only (onnx's own reader refuses absolute locations)."""
    if uses_external_data(tensor) and tensor.data_type in _PLAIN:
        return MappedValues(tensor, Path(external_info(tensor).get("location", ""))).load()
    return numpy_helper.to_array(tensor)


def stream_weights(graph: gs.Graph, data_path: Path, location: str,
                   min_bytes: int = EXTERNAL_MIN_BYTES) -> int:
    """Write the graph's weights into a fresh *data_path*, one tensor at a time; returns bytes written.

    Every constant of at least *min_bytes* is appended at an aligned offset
    and replaced by a view of the new file whose proto says *location* (the
    data file's name relative to the model), so the arrays the rewrite made
    are freed as soon as they are written.  Tensors still mapped from the
    input are copied file to file without passing through Python.
    """
    with open(data_path, "wb") as out:
        for const in _constants(graph):
            values = const._values
            tensor_type = _tensor_type(values)
            if tensor_type is None:
                continue
            nbytes = int(np.prod(const.shape, dtype=np.int64)) * _PLAIN[tensor_type].itemsize
            if nbytes < min_bytes:
                if isinstance(values, MappedValues):
                    const.values = np.array(values.load())  # small: back into the protobuf, off the input file
                continue
            offset = _pad_to(out, ALIGNMENT)
            if isinstance(values, MappedValues):
                _copy_region(values.path, values.offset, values.length, out)
            elif isinstance(values, LazyValues):
                out.write(np.asarray(values.load(), _PLAIN[tensor_type]).tobytes())
            else:
                out.write(memoryview(np.ascontiguousarray(values, _PLAIN[tensor_type])).cast("B"))
            proto = _external_proto(const.name, tensor_type, const.shape, location, offset, nbytes)
            const._values = MappedValues(proto, data_path)
            release_pages()
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def _tensor_type(values) -> Optional[int]:
    """The ONNX element type of a constant's values when it can be written as raw bytes, else None."""
    if isinstance(values, LazyValues):
        tensor = values.tensor
        return tensor.data_type if isinstance(tensor, onnx.TensorProto) and tensor.data_type in _PLAIN else None
    dtype = np.asarray(values).dtype
    if dtype.kind not in "biuf":
        return None
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    return elem if elem in _PLAIN else None


def _pad_to(out: BinaryIO, alignment: int) -> int:
    position = out.tell()
    padded = -(-position // alignment) * alignment
    if padded != position:
        out.write(b"\0" * (padded - position))
    return padded


def _copy_region(source: Path, offset: int, length: int, out: BinaryIO) -> None:
    out.flush()
    with open(source, "rb") as handle:
        copied = 0
        while copied < length:
            try:
                step = os.copy_file_range(handle.fileno(), out.fileno(), length - copied, offset + copied)
            except (AttributeError, OSError):  # no copy_file_range here: plain reads
                handle.seek(offset + copied)
                step = out.write(handle.read(min(_COPY_CHUNK, length - copied)))
            if step <= 0:
                raise ModelLoadError(f"{source}: external data ends before byte {offset + length}")
            copied += step
    out.seek(0, os.SEEK_END)


def _external_proto(name: str, elem: int, shape, location: str, offset: int, length: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=elem, dims=[int(d) for d in shape],
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def total_constant_bytes(graph: gs.Graph) -> int:
    """Bytes of every constant (without loading any): decides whether the output needs external data."""
    return sum(int(np.prod(c.shape, dtype=np.int64)) * np.dtype(c.dtype).itemsize
               for c in _constants(graph) if c.dtype is not None and not isinstance(c.dtype, int))
