"""Loading and saving models: every check on the way in, atomic writes on the way out.

Why a module of its own: bad input must fail here with one clear line (missing
file, not ONNX, truncated protobuf), and the output must never be left half
written, whatever happens later in the pipeline.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError, UsageError

# protobuf refuses single messages above 2 GiB; beyond this the weights go to external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

ModelLike = Union[str, os.PathLike, onnx.ModelProto]


def load_model(source: ModelLike) -> onnx.ModelProto:
    """Load and sanity-check a model from a path or a ModelProto (external data included)."""
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "<in-memory model>"
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelLoadError(f"{where}: no such file")
        if not path.is_file():
            raise ModelLoadError(f"{where}: not a file")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"{where}: empty file, not an ONNX model")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{where}: not a valid ONNX model ({_first_line(exc)})") from None
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read ({exc.strerror or exc})") from None
        _load_external_data(model, path)
    _check_structure(model, where)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:
        return
    folder = path.parent.resolve()
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (path.parent / location).resolve()  # resolve() follows symlinks
        if not location or Path(location).is_absolute() or folder not in (target, *target.parents):
            raise ModelLoadError(f"{path}: initializer {tensor.name} points its external data outside the "
                                 f"model's folder ({location!r}); refused")
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"{path}: cannot load external data ({_first_line(exc)})") from None


def _check_structure(model: onnx.ModelProto, where: str) -> None:
    """Refuse what is clearly not a usable model before any pass touches it."""
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or no nodes)")
    produced: dict[str, str] = {i.name: "an initializer" for i in model.graph.initializer}
    for node in model.graph.node:
        for name in node.output:
            if name and name in produced:
                raise ModelLoadError(f"{where}: tensor {name!r} is produced twice (by {produced[name]} and by node "
                                     f"{node.name or '<unnamed>'} ({node.op_type}))")
            if name:
                produced[name] = f"node {node.name or '<unnamed>'} ({node.op_type})"
    if not model.graph.output:
        raise ModelLoadError(f"{where}: the graph has no outputs")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise ModelLoadError(f"{where}: no default-domain opset import")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_output_path(path: Union[str, os.PathLike], input_path: Union[str, os.PathLike, None] = None,
                      force: bool = False) -> Path:
    """Fail early, before any work, when the output cannot be written or would overwrite the input."""
    out = Path(path)
    if input_path is not None and not force:
        try:
            same = out.exists() and os.path.samefile(out, input_path)
        except OSError:
            same = False
        if same or out.resolve() == Path(input_path).resolve():
            raise UsageError(f"{out}: output would overwrite the input model (use --force)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{out}: output folder {parent} is not writable")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder, expected a file path")
    return out


def uses_external_data(path: Union[str, os.PathLike]) -> bool:
    """Whether the model file at *path* keeps any initializer in external data (read without the data)."""
    from onnx.external_data_helper import uses_external_data as external

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001
        return False
    return any(external(t) for t in model.graph.initializer)


@contextmanager
def staged_save(model: onnx.ModelProto, path: Union[str, os.PathLike], external: Optional[bool] = None
                ) -> Iterator[Path]:
    """Write *model* atomically: a temporary folder next to *path*, fsync, then rename into place.

    Yields the temporary model path.  Models too large for one protobuf (or
    *external*) get their weights in ``<name>.data`` next to the model, written
    the same way, so an interrupted run never leaves a partial file under the
    final name.
    The files are renamed into place only when the ``with`` block succeeds, so a
    caller can verify the written file first (onnxruntime then reads it from
    disk instead of from a second in-memory copy).  With external data the
    model's tensors are moved out of *model* by onnx: afterwards it refers to
    ``<name>.data`` next to *path*.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _can_size(model) else True
    large = large or bool(external)
    data_name = out.name + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=parent) as tmp:
        tmp_model = Path(tmp) / out.name
        try:
            if large:
                onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                                all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
                _fsync(Path(tmp) / data_name)
            else:
                tmp_model.write_bytes(model.SerializeToString())
            _fsync(tmp_model)
        except OSError as exc:
            raise UsageError(f"{out}: cannot write ({exc.strerror or exc})") from None
        yield tmp_model
        try:
            if large:
                os.replace(Path(tmp) / data_name, parent / data_name)
            os.replace(tmp_model, out)
        except OSError as exc:
            raise UsageError(f"{out}: cannot write ({exc.strerror or exc})") from None


def _can_size(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf raises on > 2 GiB messages
        return False


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
