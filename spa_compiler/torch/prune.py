"""``spa_compiler.torch.prune``: plan on the module's ONNX export with the ordinary driver, cut the module itself.

Steps: export the module holding marker values (markers.py), normalize that
graph for provenance, and write it again with the real weights (export.py;
both files in a temporary folder, see docs/torch.md "Big models"); check the
export computes what the module computes; run :func:`spa_compiler.api.prune_with`
on the real graph, freezing the groups whose constants do not map onto the
module (provenance.py); cut the module's tensors as the rewrite cut the
graph's and copy changed values back (apply.py); set the layers' attributes
(modules.py); check the pruned module against the pruned ONNX model.
"""
from __future__ import annotations

import copy
import gc
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import onnx
import torch

from ..api import PruneResult, prune_with
from ..errors import CompileError, UsageError
from ..modelio import load_model, remove_stale_stages, stage_prefix
from ..options import PruneOptions
from ..pipeline import compile_model
from ..plan import Plan
from ..runtime import run
from ..weights import embed_external, release_pages
from . import export
from .apply import apply_cuts, changed_values, find_cuts
from .attention import splits_in_proportion
from .criteria import CURRENT, TORCH_CRITERIA, compute_saliency
from .derived import derived_provenance
from .distill import distill_inputs
from .hazards import channel_slicing_groups
from .export import as_tuple, flat_outputs, input_names, one_sample, scope_module
from .markers import ModuleValues, TensorTable
from .modules import unadapted_owner, update_attributes
from .provenance import after_rewrite, confirmed, decode_graph, unmappable_groups

# Relative output error above which the export (dense) or the pruned module (after) is said not to match the graph.
MATCH_TOLERANCE = 1e-4


@dataclass
class TorchPruneResult:
    """The pruned module, the pruned ONNX model, and the driver's result and report (with a ``torch`` entry)."""

    module: torch.nn.Module
    model: onnx.ModelProto
    plan: Plan
    report: dict
    onnx_result: PruneResult = field(repr=False)


def prune(module: torch.nn.Module, example_inputs, *, inplace: bool = True, batch: Optional[tuple] = None,
          loss_fn: Optional[Callable] = None, progress: Optional[Callable[[str], None]] = None,
          **options) -> TorchPruneResult:
    """Prune *module* (float32) with any ``spa_compiler.prune`` option; ``example_inputs``: a tensor or a tuple.

    batch: ``(inputs, targets)`` for the gradient criteria (``snip``, ``taylor``, ``grasp``, ``crop``; see
    criteria.py), with ``loss_fn(outputs, targets)`` (cross-entropy by default), computed in eval mode.
    ``hessian="distill"``: OBSPA's statistics on ``samples`` inputs distilled from the module (distill.py).

    inplace: cut the user's module itself (default; its parameters are replaced by new, smaller
    ``nn.Parameter`` objects, so build the optimizer after pruning), else a deep copy.  The module is
    exported in eval mode at the example inputs' shapes (batch 1: the first sample, see ``one_sample``), so
    ``result.model`` takes batch 1; the module's training mode is restored afterwards.
    """
    distilling = options.get("hessian") == "distill"
    if distilling and options.get("calib") is not None:
        raise UsageError("hessian='distill' makes its own calibration inputs: pass calib or hessian='distill', "
                         "not both")
    opts = PruneOptions(**({**options, "hessian": None} if distilling else options))
    say = progress or (lambda _msg: None)
    inputs = one_sample(as_tuple(example_inputs))
    target = module if inplace else copy.deepcopy(module)
    was_training = target.training
    target.eval()
    try:
        distilled = None
        if distilling:
            say(f"distilling {opts.samples} inputs from the dense module (the distill Hessian source)")
            distilled = distill_inputs(target, as_tuple(example_inputs), opts.samples, opts.seed)
            opts = replace(opts, hessian="calib", calib=dict(zip(input_names(inputs), distilled.inputs)))
        saliency = None
        if opts.criterion in TORCH_CRITERIA:
            say(f"computing {opts.criterion} saliency on the batch")
            saliency = compute_saliency(target, TensorTable(target), opts.criterion, batch, loss_fn)
        token = CURRENT.set(saliency)
        try:
            result = _prune(target, inputs, opts, say, saliency)
        finally:
            CURRENT.reset(token)
    finally:
        target.train(was_training)
    if distilled is not None and result.report.get("hessian"):
        result.report["hessian"].update(source="distill", why="inputs distilled from the dense module's "
                                        "BatchNorm statistics and class scores", distill=distilled.report())
    return result


def _prune(module: torch.nn.Module, inputs: tuple, opts: PruneOptions, say, saliency) -> TorchPruneResult:
    table = TensorTable(module)
    values = table.values(module)
    # External data unless the user's own output is small (it then stays one file, as spa_compiler.prune
    # writes it): the driver maps external weights from disk instead of holding a protobuf of them.
    external = opts.output is None or table.total * 4 > export.EXTERNAL_EXPORT_BYTES
    with _work_folder() as folder:
        marked_provenance, real, export_error = _export(module, inputs, table, values, folder, opts, external, say)
        provenance: dict = {}
        derived: dict = {}  # folded constants forward recomputes from cut parameters: never written back
        frozen: dict[int, str] = {}
        unadapted = {slot.name: owner for slot in table.slots if (owner := unadapted_owner(module, slot.module))}

        def follows_split(node_name: str) -> bool:
            path = scope_module(module, node_name)
            return path is not None and splits_in_proportion(module.get_submodule(path))

        def freeze(compiled) -> dict[int, str]:
            provenance.update(confirmed(marked_provenance, compiled.graph, values))
            marked_provenance.clear()  # only the confirmed ones are needed from here on
            derived.update(derived_provenance(module, table, compiled.graph, compiled.analysis, provenance))
            provenance.update(derived)
            frozen.update(channel_slicing_groups(compiled.graph, compiled.analysis, follows_split))
            frozen.update(unmappable_groups(compiled.analysis, provenance, table, unadapted))
            if saliency is not None:
                saliency.provenance = provenance
            return frozen

        output = opts.output or folder / "pruned.onnx"
        result = prune_with(real, replace(opts, output=str(output)), say, freeze=freeze)
        pruned = load_model(output)  # external weights referenced by absolute path, not read
        if opts.output is None:  # the temporary file goes with the folder: the result holds its weights
            embed_external(pruned)
            result = replace(result, model=pruned)
        say("cutting the module like the graph")
        after = after_rewrite(result.compiled.analysis, result.plan, provenance)
        cuts = find_cuts(table, provenance, after)
        changes = changed_values(pruned, {name: index for name, index in after.items() if name not in derived},
                                 values)
        values.release()  # views of the tensors about to be cut: let the old ones go with them
        provenance.clear()
        del after
        apply_cuts(module, table, cuts, changes)
        unknown = update_attributes(module, cuts)
        pruned_error = _mismatch(module, inputs, output)
    report = dict(result.report)
    if opts.output is None:
        report.pop("output", None)  # the temporary file, gone
    report["torch"] = {"tensors_cut": len(cuts), "frozen": {str(k): v for k, v in sorted(frozen.items())},
                       "modules_without_adapter": unknown, "export_error": export_error,
                       "module_vs_onnx_error": pruned_error}
    if pruned_error > MATCH_TOLERANCE:
        warnings.warn(f"spa_compiler.torch: the pruned module differs from the pruned ONNX model (relative error "
                      f"{pruned_error:.3g}); modules without an adapter: {', '.join(unknown) or 'none'}",
                      stacklevel=3)
    return TorchPruneResult(module, result.model, result.plan, report, result)


@contextmanager
def _work_folder() -> Iterator[Path]:
    """A temporary folder for the models, removed on exit; the next run removes one that a killed run (out of
    memory: SIGKILL) left, which its name tells by process id (``modelio.stage_prefix``)."""
    anchor = Path(tempfile.gettempdir()) / "spac-torch"
    remove_stale_stages(anchor)
    with tempfile.TemporaryDirectory(prefix=stage_prefix(anchor), dir=anchor.parent) as tmp:
        yield Path(tmp)


def _export(module: torch.nn.Module, inputs: tuple, table: TensorTable, values: ModuleValues, folder: Path,
            opts: PruneOptions, external: bool, say) -> tuple[dict, Path, float]:
    """(provenance of the normalized marker graph's constants, the real model's file, its error vs the module).

    The marker graph is dropped once decoded, before the real one is written: never two graphs of weights.
    """
    say("exporting the module to ONNX")
    marked = export.export_marked(table, module, inputs, folder / "marked.onnx")
    say("normalizing the marker-valued export for provenance")
    provenance = decode_graph(
        compile_model(marked, prune_hidden=opts.prune_hidden, head_dims=opts.prune_head_dims).graph, table)
    release_pages()
    real = export.write_real_model(marked, table, values, folder / "real.onnx", external)
    gc.collect()  # graphs are reference cycles: their weight copies would wait for a full collection
    error = _mismatch(module, inputs, real)
    if error > MATCH_TOLERANCE:
        raise CompileError(f"torch: the ONNX export of {type(module).__name__} does not compute what the "
                           f"module computes (relative error {error:.3g})")
    return provenance, real, error


def _mismatch(module: torch.nn.Module, inputs: tuple, model: Union[onnx.ModelProto, Path]) -> float:
    """Largest relative L2 error between the module's outputs (eval) and the ONNX model's (a proto or a file)."""
    with torch.no_grad():
        expected = [t.detach().cpu().numpy() for t in flat_outputs(module(*inputs))]
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(input_names(inputs), inputs)}
    got = run(model if isinstance(model, onnx.ModelProto) else str(model), feeds)
    if len(got) != len(expected):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return float("inf")
        scale = float(np.linalg.norm(a)) or 1.0
        worst = max(worst, float(np.linalg.norm(a.astype(np.float64) - b)) / scale)
    return worst
