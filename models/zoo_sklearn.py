"""scikit-learn zoo: MLPs and scaler + MLP pipelines exported by skl2onnx (``pip install -e ".[zoo-sklearn]"``).

skl2onnx writes classifiers with an ``ai.onnx.ml`` tail: ``ZipMap`` turns the
probabilities into a sequence of maps (a non-tensor graph output) and scalers
are ``ai.onnx.ml.Scaler`` nodes; both are what the compiler must survive (the
``lower_ml_scaler`` normalization turns the Scaler into Sub/Mul so the MLP after
it prunes).  Models are fitted for a few iterations on synthetic data
(``make_classification``/``make_regression``), so no data set is downloaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from models.zoo import ZooModel

FRAMEWORK = "sklearn"
REQUIRES = ("sklearn", "skl2onnx")
FEATURES = 20


# name -> (preprocessing steps, classifier?); the MLP itself is the same everywhere
PIPELINES = {
    "mlp_classifier": ((), True),
    "mlp_classifier_nozipmap": ((), True),
    "mlp_regressor": ((), False),
    "standard_scaler_mlp_classifier": (("standard",), True),
    "standard_scaler_mlp_regressor": (("standard",), False),
    "minmax_scaler_mlp_regressor": (("minmax",), False),
    "pca_mlp_classifier": (("standard", "pca"), True),
}


def _estimator(name: str):
    """A fresh, unfitted estimator (a pipeline when *name* has preprocessing) and whether it classifies."""
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    steps, is_classifier = PIPELINES[name]
    make = {"standard": StandardScaler, "minmax": MinMaxScaler, "pca": lambda: PCA(12)}
    mlp = (MLPClassifier if is_classifier else MLPRegressor)(hidden_layer_sizes=(64, 32), max_iter=20,
                                                             random_state=0)
    return (make_pipeline(*[make[s]() for s in steps], mlp) if steps else mlp), is_classifier


NAMES = tuple(PIPELINES)


def build(name: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        import numpy as np
        from skl2onnx import to_onnx
        from sklearn.datasets import make_classification, make_regression

        model, is_classifier = _estimator(name)
        if is_classifier:
            x, y = make_classification(200, FEATURES, n_informative=8, n_classes=3, random_state=0)
        else:
            x, y = make_regression(200, FEATURES, n_targets=2, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are all a graph needs
            model.fit(x.astype(np.float32), y)
        options = {"zipmap": False} if name.endswith("nozipmap") else None
        onx = to_onnx(model, x[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        path.write_bytes(onx.SerializeToString())
    return run


def entries() -> list[ZooModel]:
    return [ZooModel(name, FRAMEWORK, build(name), REQUIRES) for name in NAMES]


TINY = NAMES  # all small: every one is committed for the tests (models/export_frameworks.py)
