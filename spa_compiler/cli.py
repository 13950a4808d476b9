"""``spac``: the command line.  Every error is one line on stderr and a documented exit code."""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from functools import wraps

import click

from .errors import SpacError, UsageError, first_line
from .jsonout import to_json
from .inputvalues import NOISE_KINDS
from .progress import for_terminal
from .obspa.statistics import SOURCES


def _emit_json(data) -> None:
    click.echo(to_json(data))


def handled(func):
    """Turn SpacError (and anything unexpected) into one stderr line and an exit code."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        debug = os.environ.get("SPAC_DEBUG") == "1" or kwargs.get("debug", False)
        try:
            with _terminate_as_interrupt(), _quiet_numerics(debug):
                return func(*args, **kwargs)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(141)  # like a shell's SIGPIPE death: the reader (`| head`) left, nothing is wrong
        except SpacError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"spac: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("spac: interrupted (no output written)", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback for users
            if debug:
                traceback.print_exc()
            first = first_line(exc, 300)
            click.echo(f"spac: error: internal error ({type(exc).__name__}: {first}); "
                       "rerun with --debug and report it", err=True)
            sys.exit(1)

    return wrapper


@contextmanager
def _quiet_numerics(debug: bool):
    """No numpy RuntimeWarnings (with source lines) before our one-line error; ``--debug`` shows them."""
    if debug:
        yield
        return
    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


class OneLineErrors(click.Group):
    """Click's own usage errors (bad option values, ``-o`` naming a folder) as one ``spac: error:`` line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            value = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"spac: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(2)  # every error click itself raises is about the command line
        except click.Abort:
            click.echo("spac: interrupted (no output written)", err=True)
            sys.exit(130)
        sys.exit(value if isinstance(value, int) else 0)


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (``kill``) unwinds like Ctrl-C, so staged outputs are removed instead of left half written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def input_shape_option(func):
    """``--input-shape NAME:DIMS`` (repeatable), the trtexec/polygraphy convention."""
    return click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:DIMS",
                        help="Dims of an input, e.g. images:1x3x320x320 (repeatable) [default: model "
                             "metadata (imgsz), else common sizes the model runs at].")(func)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spa-compiler")
def main() -> None:
    """spa-compiler: structurally prune any ONNX model.

    Exit codes: 0 success, 1 compile failure, 2 usage or bad input, 3 verification failed.
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Pruned model path [default: MODEL.pruned.onnx].")
@click.option("--ratio", type=float, default=0.5, show_default=True,
              help="Fraction of channels removed (its MACs re-allocated by measured sensitivity when that "
                   "measures clearly better; exactly per group with --local).")
@click.option("--criterion", default="l2", show_default=True, help="Importance criterion pass (see `spac passes`).")
@click.option("--global/--local", "global_ranking", default=None,
              help="Rank channels across groups (capped per group) instead of the same ratio per group "
                   "[default: the criterion's plan (l2 per group, obspa global), unless another allocation at "
                   "the same MACs measures a clearly lower output error].")
@click.option("--max-group-ratio", type=float, default=0.9, show_default=True,
              help="With --global: at most this fraction of any group is removed.")
@click.option("--round-to", type=int, default=None,
              help="Keep channel counts multiples of N [default: exact, but layers of 32+ channels keep multiples "
                   "of 8, the widths CPU kernels run fast; --round-to 1: exact everywhere].")
@click.option("--exclude", multiple=True, help="Leave groups touching nodes matching this glob alone (repeatable).")
@click.option("--target-macs", type=float, default=None, help="Prune until MACs <= this fraction of the original.")
@click.option("--max-error", type=float, default=None,
              help="Prune as much as possible while the outputs' relative L2 error on the measurement inputs "
                   "stays at most this (with --target-macs: the target, but never beyond this error).")
@click.option("--target-speedup", type=float, default=None,
              help="Instead of a ratio: plan on measured latency tables until the model runs S times faster, "
                   "then benchmark dense vs pruned (and replan while short).")
@click.option("--target-latency", type=float, default=None, help="As --target-speedup, for a latency in ms.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where latency is planned and measured (--target-*, --check-speed).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="Intra-op threads for latency tables and benchmarks (0 = onnxruntime default).")
@click.option("--check-speed", is_flag=True, help="Benchmark dense vs pruned; warn when the pruned model is slower.")
@click.option("--reduce", type=click.Choice(["sum", "mean", "max"]), default="sum", show_default=True,
              help="How scores of coupled parameter slices combine.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prune-hidden", is_flag=True,
              help="Also prune a transformer's residual-stream width (inexact through LayerNorm).")
@click.option("--prune-head-dims", is_flag=True,
              help="Prune attention by head dimension (the same dims in every head) instead of whole heads.")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="Calibration inputs (.npz keyed by input name, or one array): real-data statistics.")
@click.option("--hessian", type=click.Choice(list(SOURCES)), default=None,
              help="Statistics source for obspa [default: calib with --calib, bnstat with BatchNorm, else synthetic].")
@click.option("--noise", type=click.Choice(list(NOISE_KINDS)), default="auto", show_default=True,
              help="Data-free inputs: auto = 1/f^2 (natural-image-like) noise for image inputs, white otherwise.")
@click.option("--samples", type=int, default=256, show_default=True, help="Noise samples for data-free statistics.")
@click.option("--damping", type=float, default=0.01, show_default=True, help="OBS damping, fraction of mean(diag H).")
@click.option("--compensate/--no-compensate", default=None,
              help="Re-solve consumer weights for removed channels [default: on for obspa].")
@click.option("--recalibrate-bn", is_flag=True, help="With --calib: recompute every BatchNorm's statistics after pruning.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check of the pruned model.")
@input_shape_option
@click.option("--force", is_flag=True, help="Allow overwriting the input model.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but warnings and errors.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Progress bar on stderr for long steps [default: when stderr is a terminal].")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handled
def prune(model, output, ratio, criterion, global_ranking, max_group_ratio, round_to, exclude, target_macs,
          max_error, target_speedup, target_latency, provider, threads, check_speed, reduce, seed, prune_hidden, prune_head_dims, calib, hessian, noise, samples, damping, compensate,
          recalibrate_bn, no_verify, input_shapes, force, report_path, as_json, quiet, show_progress, debug):
    """Prune MODEL and write a smaller ONNX model."""
    from .api import prune_with
    from .options import PruneOptions

    if output is None:
        root, _ = os.path.splitext(model)
        output = root + ".pruned.onnx"
    options = PruneOptions(ratio=ratio, criterion=criterion, global_ranking=global_ranking, round_to=round_to,
                           exclude=exclude, target_macs=target_macs, max_group_ratio=max_group_ratio, reduce=reduce,
                           seed=seed, verify=not no_verify, prune_hidden=prune_hidden,
                           prune_head_dims=prune_head_dims, calib=calib, hessian=hessian, noise=noise,
                           samples=samples, damping=damping, compensate=compensate, recalibrate_bn=recalibrate_bn,
                           max_error=max_error, output=output, force=force, report_path=report_path,
                           input_shapes=input_shapes, target_speedup=target_speedup,
                           target_latency=target_latency, provider=provider, threads=threads,
                           check_speed=check_speed)  # validated here, before any work
    progress = for_terminal(show_progress, quiet=as_json or quiet)
    result = prune_with(model, options, progress)
    report = result.report
    if as_json:
        _emit_json(report)
        return
    for warning in report.get("warnings") or []:
        click.echo(f"spac: warning: {warning}", err=True)
    if quiet:
        return
    p, m, g = report["params"], report["macs"], report["groups"]
    click.echo(f"pruned {g['pruned']} of {g['prunable']} prunable groups ({g['frozen']} frozen) with {criterion}")
    click.echo(f"params {_fmt(p['before'])} -> {_fmt(p['after'])} ({p['after'] / max(p['before'], 1):.1%})")
    click.echo(f"MACs   {_fmt(m['before'])} -> {_fmt(m['after'])} ({m['after'] / max(m['before'], 1):.1%})")
    if report.get("hessian"):
        h = report["hessian"]
        click.echo(f"statistics: {h['source']} ({h['why']}); weights compensated: {report['compensated']}")
    click.echo(f"inputs {report['inputs']['input_shapes']}" +
               (f" ({report['inputs']['chosen_by']})" if report["inputs"].get("chosen_by") else ""))
    if report.get("verify"):
        click.echo(f"verified: onnxruntime ({report['verify']['provider']}) runs it, output shapes unchanged")
    if report.get("fidelity"):
        from .fidelity import summary_line

        click.echo(summary_line(report["fidelity"]))
    if report.get("max_error"):
        click.echo(f"max error {report['max_error']['limit']}: measured {report['max_error']['measured']:.4f} "
                   f"after {report['max_error']['evaluations']} evaluations")
    if report.get("speed"):
        sp = report["speed"]
        click.echo(f"latency {sp['dense_ms']:.3f} -> {sp['pruned_ms']:.3f} ms (speedup {sp['speedup']:.2f}x) on "
                   f"{sp['provider']}, inputs {sp['input_shapes']}")
    click.echo(f"wrote {output}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="List every group, not only prunable and frozen summaries.")
@click.option("--prune-hidden", is_flag=True, help="Analyse as `spac prune --prune-hidden` would.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True)
@handled
def groups(model, show_all, prune_hidden, input_shapes, as_json, debug):
    """Show dependency groups, their atoms, and why frozen groups are frozen."""
    from .inputspec import parse_input_shapes
    from .pipeline import compile_model

    compiled = compile_model(model, prune_hidden=prune_hidden, input_shapes=parse_input_shapes(input_shapes))
    rows = []
    for g in compiled.analysis.groups:
        rows.append({"group": g.id, "prunable": g.prunable, "atoms": g.n_atoms, "width": g.width,
                     "spaces": len(g.spaces), "exact": g.exact, "layers": g.describe(),
                     "frozen": g.frozen, "inexact": g.inexact,
                     "params": [f"{p.tensor}[axis {p.axis}] ({p.role})" for p in g.params]})
    if as_json:
        _emit_json({"source": compiled.source, "groups": rows})
        return
    prunable = [r for r in rows if r["prunable"]]
    click.echo(f"{compiled.source}: {len(rows)} groups, {len(prunable)} prunable")
    for r in rows:
        if r["prunable"] or show_all or r["frozen"]:
            state = "prunable" if r["prunable"] else ("frozen: " + "; ".join(r["frozen"][:2]) if r["frozen"]
                                                      else "too small")
            click.echo(f"  #{r['group']:<4} atoms {r['atoms']:>5}  width {r['width']:>5}  spaces {r['spaces']:>3}  "
                       f"{r['layers'][:60]:<60}  {state}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True)
@handled
def inspect(model, input_shapes, as_json, debug):
    """Per-layer parameters and MACs (at the input shapes: given, or chosen as `spac prune` would)."""
    from .cost import layer_costs, totals
    from .inputspec import parse_input_shapes
    from .pipeline import compile_model
    from .shapes import concrete_shapes

    compiled = compile_model(model, input_shapes=parse_input_shapes(input_shapes), run_dense=True)
    shapes = concrete_shapes(compiled.graph, compiled.spec)
    layers = [c for c in layer_costs(compiled.graph, shapes) if c.params or c.macs]
    params, macs = totals(compiled.graph, shapes)
    if as_json:
        _emit_json({"source": compiled.source, "input_shapes": compiled.spec.describe(), "params": params,
                    "macs": macs, "layers": [c.__dict__ for c in layers]})
        return
    click.echo(f"inputs {compiled.spec.describe()}")
    click.echo(f"{'layer':<60} {'op':<20} {'params':>10} {'MACs':>10}")
    for c in layers:
        click.echo(f"{c.name[:60]:<60} {c.op:<20} {_fmt(c.params):>10} {_fmt(c.macs):>10}")
    click.echo(f"{'total':<60} {'':<20} {_fmt(params):>10} {_fmt(macs):>10}")


@main.command()
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=30, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=0, show_default=True, help="Intra-op threads (0 = onnxruntime default).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when onnxruntime-gpu runs on a device here, else CPU; cuda: that or a one-line error.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True)
@handled
def bench(model_a, model_b, batch, runs, warmup, threads, provider, input_shapes, as_json, debug):
    """Latency of A and B on the same provider and threads; prints B/A next to the MACs ratio."""
    from .cost import totals
    from .modelio import load_model
    from .densecheck import bench_spec
    from .normalize import normalize
    from .runtime import bench_pair
    from .shapes import concrete_shapes

    if batch < 1 or runs < 1 or warmup < 0:
        raise UsageError("--batch and --runs must be >= 1, --warmup >= 0")
    from .latency.providers import providers_for

    providers = providers_for(provider)  # before loading anything: CUDA asked for and absent is one line
    a, b = load_model(model_a), load_model(model_b)
    spec = bench_spec(a, model_a, input_shapes, batch)
    try:  # paths, not protos: onnxruntime resolves external data next to each model
        ta, tb, provider = bench_pair(model_a, model_b, batch=batch, warmup=warmup, runs=runs, threads=threads,
                                      spec=spec, providers=providers)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot run the models in onnxruntime: {first_line(exc)}") from None
    graph_a, graph_b = normalize(a, spec=spec).graph, normalize(b, spec=spec).graph
    macs_a = totals(graph_a, concrete_shapes(graph_a, spec))[1]
    macs_b = totals(graph_b, concrete_shapes(graph_b, spec))[1]
    data = {"provider": provider, "batch": batch, "threads": threads, "input_shapes": spec.describe(),
            "a": {"path": model_a, "median_ms": ta.median_ms, "p10_ms": ta.p10_ms, "p90_ms": ta.p90_ms, "runs": ta.runs,
                  "macs": macs_a},
            "b": {"path": model_b, "median_ms": tb.median_ms, "p10_ms": tb.p10_ms, "p90_ms": tb.p90_ms, "runs": tb.runs,
                  "macs": macs_b},
            "latency_ratio": tb.median_ms / ta.median_ms, "macs_ratio": macs_b / max(macs_a, 1)}
    if as_json:
        _emit_json(data)
        return
    click.echo(f"provider {provider}, inputs {spec.describe()}, {ta.runs} runs each")
    for key, t in (("A", ta), ("B", tb)):
        click.echo(f"  {key}: median {t.median_ms:.3f} ms  (p10 {t.p10_ms:.3f}, p90 {t.p90_ms:.3f})")
    click.echo(f"latency B/A {data['latency_ratio']:.3f}   MACs B/A {data['macs_ratio']:.3f}")


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True)
@handled
def verify(original, pruned, input_shapes, as_json, debug):
    """Check that PRUNED passes onnx.checker, runs, and keeps ORIGINAL's output shapes."""
    from .densecheck import check_dense, declared_outputs, verify_like_dense
    from .inputspec import parse_input_shapes
    from .modelio import load_model

    given = parse_input_shapes(input_shapes)
    dense_model = load_model(original)  # every input check, with one-line errors naming the file
    dense = check_dense(dense_model, original, given)  # paths: onnxruntime resolves external data
    load_model(pruned)
    if not dense.outputs:  # too large to run before: both run now, at the declared shapes
        from .runtime import check_runs

        result = check_runs(original, pruned)
    else:
        try:
            result = verify_like_dense(pruned, dense, declared_outputs(dense_model))
        except SpacError as exc:
            raise type(exc)(f"{pruned}: {exc}") from None
    if as_json:
        _emit_json({"ok": True, **result})
    else:
        click.echo(f"ok: {pruned} runs on {result['provider']} with the output shapes of {original}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@handled
def passes(as_json):
    """List the registered passes (built-in and plugins)."""
    from .registry import all_passes

    rows = [{"name": p.name, "kind": p.kind, "summary": p.summary, "origin": p.origin} for p in all_passes()]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['kind']:<10} {r['name']:<28} {r['summary']}")


if __name__ == "__main__":  # pragma: no cover
    main()
