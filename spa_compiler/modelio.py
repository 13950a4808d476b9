"""Loading and saving models: every check on the way in, atomic writes on the way out.

Why a module of its own: bad input must fail here with one clear line (missing
file, not ONNX, truncated protobuf), and the output must never be left half
written, whatever happens later in the pipeline.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError, UsageError
from .validate import check_model

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
    check_model(model, where)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Check every external-data reference, then point it at its absolute file (read lazily, see weights.py).

    Refused: locations outside the model's folder (``..``, absolute paths,
    symlinks that lead out), missing files, and regions past a file's end, so
    no later pass can be made to read elsewhere or fail half-way.
    """
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from .weights import external_info, resolve_locations

    folder = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = external_info(tensor)
        location = info.get("location", "")
        target = (path.parent / location).resolve()  # resolve() follows symlinks
        if not location or Path(location).is_absolute() or folder not in (target, *target.parents):
            raise ModelLoadError(f"{path}: initializer {tensor.name} points its external data outside the "
                                 f"model's folder ({location!r}); refused")
        if not target.is_file():
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data file {location!r} not found")
        try:
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
        except ValueError:
            raise ModelLoadError(f"{path}: initializer {tensor.name}: bad external data offset/length") from None
        if end > target.stat().st_size:
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data ends at byte {end}, past the "
                                 f"end of {location!r}")
    resolve_locations(model, path.parent)


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


def external_locations(path: Union[str, os.PathLike]) -> set[str]:
    """The external data files the model file at *path* names (read without the data; empty if unreadable)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as external

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001
        return set()
    return {e.value for t in _get_all_tensors(model) if external(t) for e in t.external_data if e.key == "location"}


def uses_external_data(path: Union[str, os.PathLike]) -> bool:
    """Whether the model file at *path* keeps any initializer in external data."""
    return bool(external_locations(path))


@dataclass
class Stage:
    """Where an output is written before it is renamed into place: a temporary folder next to it."""

    folder: Path
    model_path: Path
    data_name: str  # the weights file's name, relative to the model (``<name>.data``)

    @property
    def data_path(self) -> Path:
        return self.folder / self.data_name


@contextmanager
def staged_output(path: Union[str, os.PathLike]) -> Iterator[Stage]:
    """A temporary folder next to *path*; its files are renamed into place only if the block succeeds.

    The caller writes (and may verify) the model there: an interrupted or
    failed run removes the folder and never leaves a partial file under the
    final name.  The weights file goes first, so the final model never points
    at data that is not there yet.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=parent) as tmp:
        stage = Stage(Path(tmp), Path(tmp) / out.name, out.name + ".data")
        yield stage
        try:
            if stage.data_path.exists():
                os.replace(stage.data_path, parent / stage.data_name)
            os.replace(stage.model_path, out)
        except OSError as exc:
            raise UsageError(f"{out}: cannot write ({exc.strerror or exc})") from None


def write_proto(model: onnx.ModelProto, stage: Stage, external: bool = False) -> None:
    """Write an in-memory model into *stage*: one protobuf, or weights in ``<name>.data`` when
    *external* or too large for one protobuf (onnx then moves the tensors out of *model*)."""
    large = external or (model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _can_size(model) else True)
    try:
        if large:
            onnx.save_model(model, str(stage.model_path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=stage.data_name, size_threshold=1024)
            _fsync(stage.data_path)
        else:
            stage.model_path.write_bytes(model.SerializeToString())
        _fsync(stage.model_path)
    except OSError as exc:
        raise UsageError(f"{stage.model_path.name}: cannot write ({exc.strerror or exc})") from None


def write_graph(graph, meta, stage: Stage, external: bool) -> onnx.ModelProto:
    """Write a gs graph into *stage*; returns the written ModelProto.

    With *external*, the weights are streamed to the data file one tensor at a
    time and the protobuf only refers to them: memory stays near one tensor
    instead of a serialized copy of the model.
    """
    from .ir import to_model
    from .weights import stream_weights

    if not external:
        model = to_model(graph, meta)
        write_proto(model, stage)
        return model
    try:
        stream_weights(graph, stage.data_path, stage.data_name)
        model = to_model(graph, meta, embed=False)
        stage.model_path.write_bytes(model.SerializeToString())
        _fsync(stage.model_path)
    except OSError as exc:
        raise UsageError(f"{stage.model_path.name}: cannot write ({exc.strerror or exc})") from None
    return model


def _can_size(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf raises on > 2 GiB messages
        return False


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
