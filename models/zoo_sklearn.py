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


def _estimator(name: str):
    """A fresh, unfitted estimator and whether it is a classifier."""
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    hidden = (64, 32)
    classifier = lambda: MLPClassifier(hidden_layer_sizes=hidden, max_iter=20, random_state=0)  # noqa: E731
    regressor = lambda: MLPRegressor(hidden_layer_sizes=hidden, max_iter=20, random_state=0)  # noqa: E731
    table = {
        "mlp_classifier": (classifier, True),
        "mlp_classifier_nozipmap": (classifier, True),
        "mlp_regressor": (regressor, False),
        "standard_scaler_mlp_classifier": (lambda: make_pipeline(StandardScaler(), classifier()), True),
        "standard_scaler_mlp_regressor": (lambda: make_pipeline(StandardScaler(), regressor()), False),
        "minmax_scaler_mlp_regressor": (lambda: make_pipeline(MinMaxScaler(), regressor()), False),
        "pca_mlp_classifier": (lambda: make_pipeline(StandardScaler(), PCA(12), classifier()), True),
    }
    make, is_classifier = table[name]
    return make(), is_classifier


NAMES = ("mlp_classifier", "mlp_classifier_nozipmap", "mlp_regressor", "standard_scaler_mlp_classifier",
         "standard_scaler_mlp_regressor", "minmax_scaler_mlp_regressor", "pca_mlp_classifier")


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
