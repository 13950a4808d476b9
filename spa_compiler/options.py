"""Every option of ``spac prune`` / ``spa_compiler.prune`` in one frozen, validated object.

The CLI and the API both build a :class:`PruneOptions`; its constructor checks
every range and name once, before any file is read or any statistic computed,
so a bad option costs a one-line error, not minutes of analysis first.  It also
looks the criterion pass up once and resolves what its declared contract
implies (global ranking, compensation, score normalization).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from . import registry
from .criterion import Criterion
from .errors import UsageError
from .importance import REDUCTIONS
from .inputspec import parse_input_shapes
from .inputvalues import NOISE_KINDS
from .obspa.statistics import SOURCES
from .plan import DEFAULT_SNAP, PlanOptions


@dataclass(frozen=True)
class PruneOptions:
    """What to prune and how (see ``docs/cli.md`` for each option's meaning)."""

    ratio: float = 0.5
    criterion: str = "l2"
    global_ranking: Optional[bool] = None  # None: the criterion's preference (prefers_global)
    round_to: Optional[int] = None  # None: exact widths; a plain --ratio run snaps wide layers (snaps_widths)
    exclude: Sequence[str] = ()
    target_macs: Optional[float] = None
    max_group_ratio: float = 0.9
    reduce: str = "sum"
    seed: int = 0
    verify: bool = True
    prune_hidden: bool = False
    prune_head_dims: bool = False
    hessian: Optional[str] = None  # None: chosen from the model and --calib
    calib: Any = None  # .npz path, or a dict of arrays keyed by input name
    samples: int = 256
    damping: float = 0.01
    compensate: Optional[bool] = None  # None: the criterion's contract (compensates)
    recalibrate_bn: bool = False
    noise: str = "auto"
    max_error: Optional[float] = None  # prune as far as this relative output error allows (see budget.py)
    output: Optional[str] = None
    force: bool = False
    report_path: Optional[str] = None
    # {"images": (1, 3, 320, 320)}, or the CLI's ["images:1x3x320x320"] (parsed to the dict); see inputspec
    input_shapes: Any = None
    target_speedup: Optional[float] = None  # plan for measured latency (see spa_compiler/latency/)
    target_latency: Optional[float] = None  # milliseconds, at the input spec
    provider: str = "cpu"  # where latency is planned and measured: cpu, cuda, auto
    threads: int = 0  # intra-op threads of the latency tables and benchmarks (0: onnxruntime's default)
    check_speed: bool = False  # benchmark dense vs pruned after pruning; say so when pruned is slower
    criterion_pass: registry.PassInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.exclude, str):  # one pattern, not its characters
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "input_shapes", parse_input_shapes(self.input_shapes))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` (one line, exit 2) for the first option out of range."""
        object.__setattr__(self, "criterion_pass", registry.get("criterion", self.criterion))
        _number("--ratio", self.ratio)
        _number("--max-group-ratio", self.max_group_ratio)
        if self.round_to is not None:
            _integer("--round-to", self.round_to)
        self.plan_options(global_ranking=False)  # ratio, round_to, max_group_ratio ranges
        if self.target_macs is not None:
            _number("--target-macs", self.target_macs)
            if not 0.0 < self.target_macs <= 1.0:
                raise UsageError(f"--target-macs must be in (0, 1], got {self.target_macs}")
        if self.max_error is not None:
            _above("--max-error", self.max_error, 0, strict=True)
        if self.reduce not in REDUCTIONS:
            raise UsageError(f"unknown reduction {self.reduce!r} (use one of {', '.join(REDUCTIONS)})")
        _above("--seed", self.seed, 0, integer=True)
        _above("--samples", self.samples, 2, integer=True)
        _above("--damping", self.damping, 0)
        if self.noise not in NOISE_KINDS:
            raise UsageError(f"unknown noise {self.noise!r} (use one of {', '.join(NOISE_KINDS)})")
        if self.hessian == "distill":  # spa_compiler.torch.prune turns it into distilled calibration inputs
            raise UsageError("the distill Hessian source needs gradients of the dense model: use "
                             "spa_compiler.torch.prune(module, example_inputs, hessian='distill')")
        if self.hessian is not None and self.hessian not in SOURCES:
            raise UsageError(f"unknown Hessian source {self.hessian!r} (use one of {', '.join(SOURCES)})")
        if self.hessian == "calib" and self.calib is None:
            raise UsageError("the calib Hessian source needs --calib inputs")
        if self.recalibrate_bn and self.calib is None:
            raise UsageError("--recalibrate-bn needs --calib inputs")
        self._validate_speed()
        if not all(isinstance(pattern, str) for pattern in self.exclude):
            raise UsageError(f"--exclude takes name patterns (strings), got {list(self.exclude)!r}")

    def _validate_speed(self) -> None:
        """Latency targets: one target at a time, positive, a provider that exists (CUDA: usable here)."""
        from .latency.providers import PROVIDER_CHOICES, providers_for

        if self.target_speedup is not None:
            _above("--target-speedup", self.target_speedup, 1, strict=True)
        if self.target_latency is not None:
            _above("--target-latency", self.target_latency, 0, strict=True, unit=" ms")
        targets = [flag for flag, value in (("--target-speedup", self.target_speedup),
                                            ("--target-latency", self.target_latency),
                                            ("--target-macs", self.target_macs), ("--max-error", self.max_error))
                   if value is not None]
        if self.latency_target and len(targets) > 1:
            raise UsageError(f"choose one target: {' and '.join(targets)} were both given")
        _above("--threads", self.threads, 0, integer=True)
        if self.provider not in PROVIDER_CHOICES:
            raise UsageError(f"unknown provider {self.provider!r} (use one of {', '.join(PROVIDER_CHOICES)})")
        if self.provider == "cuda":
            providers_for(self.provider)  # one line now, before the model is read, when CUDA cannot run

    @property
    def latency_target(self) -> bool:
        return self.target_speedup is not None or self.target_latency is not None

    @property
    def contract(self) -> type[Criterion]:
        """The criterion pass class (looked up once, at construction)."""
        return self.criterion_pass.factory

    @property
    def ranks_globally(self) -> bool:
        return self.contract.prefers_global if self.global_ranking is None else self.global_ranking

    @property
    def compensating(self) -> bool:
        return self.contract.compensates if self.compensate is None else self.compensate

    @property
    def needs_statistics(self) -> bool:
        return self.compensating or self.contract.needs_statistics

    @property
    def snaps_widths(self) -> bool:
        """Whether wide layers keep multiples of DEFAULT_SNAP (plan.py): only a plain ``--ratio`` run.

        The snap is a latency default for plans that state no budget.  A stated budget is the contract:
        ``--target-macs`` and ``--max-error`` land on it with exact widths (snapped plans overshoot a MACs
        target on the staircase: the digits CNN at MACs x0.25 kept 0.815 instead of 0.956), and latency
        targets choose widths from the measured tables.  ``--round-to`` always applies when given.
        """
        return (self.round_to is None and self.target_macs is None and self.max_error is None
                and not self.latency_target)

    def plan_options(self, global_ranking: Optional[bool] = None) -> PlanOptions:
        """The planner's share of the options (constructing it checks their ranges)."""
        scaling = self.contract.global_score_scaling
        extra = {"score_scaling": scaling} if scaling else {}
        snapped = self.snaps_widths
        return PlanOptions(ratio=self.ratio, max_group_ratio=self.max_group_ratio,
                           round_to=1 if self.round_to is None else self.round_to, snap=DEFAULT_SNAP if snapped else 1,
                           exclude=self.exclude,
                           global_ranking=self.ranks_globally if global_ranking is None else global_ranking, **extra)


def _number(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{flag} must be a number, got {value!r}")


def _above(flag: str, value, low: float, *, integer: bool = False, strict: bool = False, unit: str = "") -> None:
    """A number (an integer with *integer*) at least *low* (above it with *strict*), else one usage line."""
    (_integer if integer else _number)(flag, value)
    if not (value > low if strict else value >= low):
        raise UsageError(f"{flag} must be {'>' if strict else '>='} {low}{unit}, got {value}")


def _integer(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{flag} must be an integer, got {value!r}")
