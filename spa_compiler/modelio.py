"""Loading and saving models: every check on the way in, atomic writes on the way out.

Why a module of its own: bad input must fail here with one clear line (missing
file, not ONNX, truncated protobuf), and the output must never be left half
written, whatever happens later in the pipeline.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError, UsageError
from .validate import check_model, topological_order

# protobuf refuses single messages above 2 GiB; beyond this the weights go to external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

ModelLike = Union[str, os.PathLike, onnx.ModelProto]


def load_model(source: ModelLike) -> onnx.ModelProto:
    """Load and sanity-check a model from a path or a ModelProto (external data included)."""
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "<in-memory model>"
    else:
        path = check_input_file(source)
        where = str(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{where}: not a valid ONNX model ({_first_line(exc)})") from None
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read ({exc.strerror or exc})") from None
        _load_external_data(model, path)
    check_model(model, where)
    topological_order(model)
    return model


def check_input_file(source: Union[str, os.PathLike]) -> Path:
    """A model path that exists, is a regular file (not a FIFO that would block) and is not empty."""
    path = Path(source)
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not a model file")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file (a device, FIFO or socket)")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    return path


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
        if not target.exists():
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data file {location!r} not found")
        if not target.is_file():
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data file {location!r} is not a "
                                 "regular file (a device, FIFO or socket)")
        if target.stat().st_nlink > 1:
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data file {location!r} has "
                                 f"{target.stat().st_nlink} hard links, so it may live outside the model's folder; "
                                 "refused (copy it to break the links)")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", 0))
        except ValueError:
            offset = length = -1
        if offset < 0 or length < 0:
            raise ModelLoadError(f"{path}: initializer {tensor.name}: bad external data offset/length "
                                 f"({info.get('offset')!r}, {info.get('length')!r})")
        end = offset + length
        if end > target.stat().st_size:
            raise ModelLoadError(f"{path}: initializer {tensor.name}: external data ends at byte {end}, past the "
                                 f"end of {location!r}")
    resolve_locations(model, path.parent)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_output_path(path: Union[str, os.PathLike], input_path: Union[str, os.PathLike, None] = None,
                      force: bool = False, what: str = "output") -> Path:
    """Fail early, before any work, when the output cannot be written or would overwrite the input.

    An existing path that is not a regular file (a device such as
    ``/dev/null``, a FIFO, a socket) is refused: the write is a rename, which
    would replace the node itself.
    """
    out = Path(path)
    if input_path is not None and not force and same_file(out, input_path):
        raise UsageError(f"{out}: {what} would overwrite the input model (use --force)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: {what} folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{out}: {what} folder {parent} is not writable")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder, expected a file path for the {what}")
    if (out.exists() or out.is_symlink()) and not out.is_file():
        raise UsageError(f"{out}: not a regular file (a device, FIFO or socket); refused as the {what}")
    return out


def same_file(a: Union[str, os.PathLike], b: Union[str, os.PathLike]) -> bool:
    """Whether two paths name one file: the same real path, or (both existing) the same inode (hard links)."""
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return Path(a).resolve() == Path(b).resolve()


def data_files(model_path: Union[str, os.PathLike]) -> list[Path]:
    """The external data files the model file at *model_path* names (none if it cannot be read)."""
    path = Path(model_path)
    return [path.parent / name for name in sorted(external_locations(path))]


def check_written_files(output: Union[str, os.PathLike], report: Union[str, os.PathLike, None],
                        model_path: Union[str, os.PathLike, None], calib=None, force: bool = False) -> None:
    """Before any work: the files a run writes (model, its ``.data`` file, report) are writable,
    distinct from each other, and none of them is a file the run reads.

    Why: a rename onto the input's external data file (``-o out.onnx`` when the
    input reads ``out.onnx.data``) or a report written over the model would
    silently destroy the user's data.  ``--force`` only allows replacing the
    input model itself (its data file then is replaced with it).
    """
    out = check_output_path(output, model_path, force)
    data = out.parent / (out.name + ".data")
    if data.exists() or data.is_symlink():
        check_output_path(data, what="output's weights file")
    in_place = model_path is not None and same_file(out, model_path)
    weights = [] if model_path is None else data_files(model_path)
    calib_file = [Path(calib)] if isinstance(calib, (str, os.PathLike)) else []
    pairs = [(out, "output", source) for source in weights + calib_file]
    pairs += [(data, "output's weights file", source) for source in (calib_file if in_place else weights + calib_file)]
    for path, what, source in pairs:
        if same_file(path, source):
            raise UsageError(f"{path}: the {what} would overwrite {source}, which this run reads; "
                             "choose another output name")
    if report is not None:
        rep = check_output_path(report, None, what="report")
        for other in (out, data, *([Path(model_path)] if model_path is not None else []), *weights, *calib_file):
            if same_file(rep, other):
                raise UsageError(f"{rep}: the report would overwrite {other}; choose another report path")


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
    companions: list[tuple[Path, Path]] = field(default_factory=list)  # (staged file, final path)

    @property
    def data_path(self) -> Path:
        return self.folder / self.data_name

    def add_file(self, path: Union[str, os.PathLike], data: bytes) -> None:
        """Stage another file (the JSON report) to be renamed into place with the model, or not at all.

        It is written now, as a hidden file next to *path* (a rename only works
        within one file system), so a failure to write it fails the whole output.
        """
        final = Path(path)
        parent = final.parent if str(final.parent) else Path(".")
        remove_stale_stages(final)
        handle, name = tempfile.mkstemp(prefix=stage_prefix(final), dir=parent)
        staged = Path(name)
        self.companions.append((staged, final))
        try:
            with os.fdopen(handle, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise UsageError(f"{final}: cannot write ({exc.strerror or exc})") from None


def stage_prefix(path: Union[str, os.PathLike], pid: Optional[int] = None) -> str:
    """Hidden name prefix of a staged write of *path*: it names the writing process, so a later run can
    tell the stage of a killed process (SIGKILL leaves no chance to clean up) from one in progress."""
    return f".{Path(path).name}.spac-{os.getpid() if pid is None else pid}-"


def remove_stale_stages(path: Union[str, os.PathLike]) -> int:
    """Remove stages of *path* left by processes that no longer exist; returns how many were removed."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    head = f".{out.name}.spac-"
    removed = 0
    try:
        entries = [e for e in os.listdir(parent) if e.startswith(head)]
    except OSError:
        return 0
    for entry in entries:
        pid = entry[len(head):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        stale = parent / entry
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with suppress(OSError):
                stale.unlink()
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or nonsense): not ours to judge
    return True


@contextmanager
def staged_output(path: Union[str, os.PathLike]) -> Iterator[Stage]:
    """A temporary folder next to *path*; its files are renamed into place only if the block succeeds.

    The caller writes (and may verify) the model there: an interrupted or
    failed run removes the folder and never leaves a partial file under the
    final name.  The weights file goes first, so the final model never points
    at data that is not there yet; staged companions (the report) go last.
    Stages of killed runs of the same output are removed first.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    remove_stale_stages(out)
    stage = folder = None
    try:
        with _signals_held():  # the folder exists only once the finally below knows to remove it
            folder = Path(tempfile.mkdtemp(prefix=stage_prefix(out), dir=parent))
        stage = Stage(folder, folder / out.name, out.name + ".data")
        yield stage
        try:
            if stage.data_path.exists():
                os.replace(stage.data_path, parent / stage.data_name)
            os.replace(stage.model_path, out)
            for staged, final in stage.companions:
                os.replace(staged, final)
        except OSError as exc:
            raise UsageError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        with _signals_held():  # a second kill must not stop the clean-up half way
            for staged, _final in stage.companions if stage is not None else ():
                with suppress(OSError):
                    staged.unlink()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (then unwind as usual).

    Why: a kill landing between ``mkdtemp`` and the code that would remove the
    folder left a stage behind; the kill-while-writing test sends SIGTERM the
    moment the folder appears, which is exactly that window.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
