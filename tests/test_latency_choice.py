"""The latency planner's last step, its uniform candidate, the measured choice, Conv1d layers and the Amdahl line.

No clock: the fake timer of test_latency.py gives every layer a MACs-like latency,
and the choice's judge is a stub returning chosen errors.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import builders
from spa_compiler import prune
from spa_compiler.latency.choice import LATENCY, UNIFORM, PlanChoice
from spa_compiler.latency.layers import CONV1D, timed_layers
from spa_compiler.latency.measure import op_model
from spa_compiler.latency.planner import LatencyModel, LatencyPlanner
from spa_compiler.latency.table import LatencyTable
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.plan import PlanOptions
from spa_compiler.runtime import session
from tests.test_latency import FakeTimer, injected  # noqa: F401 - the fixture is used by name


@pytest.fixture(scope="module")
def demo():
    compiled = compile_model(builders.demo_cnn())
    return compiled, score_groups(compiled, "l2")


def _planner(demo, scaling: str = "mean") -> LatencyPlanner:
    compiled, scores = demo
    table = LatencyTable(FakeTimer(), None, "cpu")
    model = LatencyModel(timed_layers(compiled.graph, compiled.analysis, compiled.spec), table, compiled.analysis)
    return LatencyPlanner(compiled.analysis, scores, PlanOptions(score_scaling=scaling), model, table)


def _best_ratio_to_the_end(planner: LatencyPlanner, target_ms: float) -> float:
    """The planner's loop before the last step was chosen apart: best ratio until the target is met."""
    while planner.predicted_ms() > target_ms:
        moves = [(move, gid) for gid in planner.widths for move in planner._moves(gid)]
        if not moves:
            break
        move, gid = max(moves)
        planner.widths[gid].kept = move[1]
    return planner.lost()


@pytest.mark.parametrize("fraction", [0.97, 0.9, 0.89, 0.8, 0.7, 0.5])
def test_planner_loses_no_more_than_best_ratio_to_the_end(demo, fraction):
    planner = _planner(demo)
    dense = planner.predicted_ms()
    _, info = planner.plan(fraction * dense)
    assert info["predicted_ms"] <= fraction * dense
    assert planner.lost() <= _best_ratio_to_the_end(_planner(demo), fraction * dense) + 1e-9


def test_planner_does_not_jump_far_past_a_near_target(demo):
    """At 0.97 of dense the best ratio is a tread of a conv that saves 10 %; a cheaper 4 % move reaches it."""
    planner = _planner(demo)
    dense = planner.predicted_ms()
    reference = _planner(demo)
    _best_ratio_to_the_end(reference, 0.97 * dense)
    assert reference.predicted_ms() < 0.92 * dense, "the scenario: best ratio overshoots"
    _, info = planner.plan(0.97 * dense)
    assert 0.94 * dense < info["predicted_ms"] <= 0.97 * dense
    assert planner.lost() < reference.lost()


def test_uniform_keeps_one_fraction_in_every_group_at_the_target(demo):
    planner = _planner(demo)
    dense = planner.predicted_ms()
    plan, info = planner.uniform(0.7 * dense)
    assert plan.removed and info["predicted_ms"] <= 0.7 * dense
    lower, upper = 0.0, 1.0  # some f with previous tread < f * n <= kept in every group
    for widths in planner.widths.values():
        n = widths.group.n_atoms
        position = widths.allowed.index(widths.kept)
        upper = min(upper, widths.kept / n)
        if position:
            lower = max(lower, widths.allowed[position - 1] / n)
    assert lower < upper, (lower, upper)
    wider = _planner(demo)
    wider._set_fraction(upper + 1e-6)  # the next fraction up keeps more and misses the target
    assert wider.predicted_ms() > 0.7 * dense or upper == 1.0


def test_floor_is_every_group_at_its_cap(demo):
    planner = _planner(demo)
    dense = planner.predicted_ms()
    floor = planner.floor_ms()
    assert floor < dense and planner.predicted_ms() == dense, "the planner is left at the dense widths"
    _, info = _planner(demo).plan(0.01 * dense)
    assert info["predicted_ms"] == pytest.approx(floor, rel=0.05)


def _fidelity(error: float) -> dict:
    return {"rel_error": error, "cosine": 0.9, "finite": True, "mismatch": None}


def _choice(demo, errors: dict[str, float]) -> tuple[PlanChoice, list]:
    """At 0.6 of dense (where the uniform plan lands within SAME_LATENCY of the latency plan), a choice whose judge gives the latency plan errors[LATENCY], the uniform plan errors[UNIFORM], others 9."""
    dense = _planner(demo).predicted_ms()
    plans = {LATENCY: _planner(demo).plan(0.6 * dense)[0], UNIFORM: _planner(demo).uniform(0.6 * dense)[0]}
    judged: list = []

    def judge(plan):
        judged.append(plan)
        for name, known in plans.items():
            if known.removed.keys() == plan.removed.keys() and all(
                    np.array_equal(np.sort(known.removed[g]), np.sort(plan.removed[g])) for g in plan.removed):
                return _fidelity(errors[name])
        return _fidelity(9.0)

    return PlanChoice(lambda scaling=None: _planner(demo, scaling or "mean"), judge), judged


def test_choice_takes_the_candidate_that_measures_best(demo):
    dense = _planner(demo).predicted_ms()
    choice, judged = _choice(demo, {LATENCY: 0.5, UNIFORM: 0.3})
    plan, info = choice.plan(0.6 * dense)
    assert info["plans"]["chosen"] == UNIFORM and info["predicted_ms"] <= 0.6 * dense
    assert info["plans"]["errors"][UNIFORM] == 0.3 and len(judged) >= 2
    choice, _ = _choice(demo, {LATENCY: 0.3, UNIFORM: 0.3})
    _, info = choice.plan(0.6 * dense)
    assert info["plans"]["chosen"] == LATENCY, "a tie keeps the latency plan"


def test_choice_without_measurement_inputs_is_the_latency_plan(demo):
    dense = _planner(demo).predicted_ms()
    plan, info = PlanChoice(lambda scaling=None: _planner(demo, scaling or "mean")).plan(0.6 * dense)
    reference, _ = _planner(demo).plan(0.6 * dense)
    assert "plans" not in info and {g: len(r) for g, r in plan.removed.items()} == \
        {g: len(r) for g, r in reference.removed.items()}


def conv1d_model() -> onnx.ModelProto:
    """x [N, 8, 16] -> Conv1d(24, k3) -> Relu -> Conv1d(12, k5) : a sequence tagger's convs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (24, 8, 3)), ("b1", (24,)), ("w2", (12, 24, 5)), ("b2", (12,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[2, 2])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv1d_layers_are_timed_as_conv1d():
    compiled = compile_model(conv1d_model())
    layers = timed_layers(compiled.graph, compiled.analysis, compiled.spec)
    assert [(layer.node, layer.kind, layer.c_in, layer.c_out) for layer in layers] == \
        [("conv1", CONV1D, 8, 24), ("conv2", CONV1D, 24, 12)]
    assert layers[1].fixed == (1, 16, 5, 1, 2, 2, 1) and layers[1].signature != layers[0].signature
    one = op_model(layers[1], 16, 12)  # input width cut to 16: the op the table times
    out = session(one).run(None, {"x": np.zeros((1, 16, 16), np.float32)})[0]
    assert out.shape == (1, 12, 16)


def test_out_of_reach_target_is_said_up_front(injected):  # noqa: F811
    result = prune(builders.demo_cnn(), target_speedup=50.0)
    speed = result.report["speed"]
    reachable = speed["tables"]["reachable_speedup"]
    assert 1.0 < reachable < 50.0
    lines = [w for w in result.report["warnings"] if w.startswith("at most")]
    assert len(lines) == 1 and f"{reachable:.2f}x" in lines[0]
    reachable_target = prune(builders.demo_cnn(), target_speedup=1.2)
    assert not any(w.startswith("at most") for w in reachable_target.report["warnings"])


def test_choice_ignores_a_candidate_far_faster_than_the_latency_plan(demo):
    """A uniform plan that only meets the target far under it (coarse treads) is not at the same latency."""
    dense = _planner(demo).predicted_ms()
    choice, _ = _choice(demo, {LATENCY: 0.5, UNIFORM: 0.3})
    far = _planner(demo).uniform(0.3 * dense)
    choice.planner_for = lambda scaling=None, real=choice.planner_for: _Faster(real(scaling), far)
    _, info = choice.plan(0.6 * dense)
    assert UNIFORM not in info["plans"]["errors"] and info["plans"]["chosen"] == LATENCY


class _Faster:
    """A planner whose uniform candidate is a given (much faster) plan."""

    def __init__(self, planner: LatencyPlanner, uniform) -> None:
        self.planner, self.options, self._uniform = planner, planner.options, uniform

    def plan(self, target_ms: float):
        return self.planner.plan(target_ms)

    def uniform(self, target_ms: float):
        return self._uniform
