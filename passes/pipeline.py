"""The order in which normalization passes run, and the slot where plugins run.

Two levels: *model* passes take and return an ``onnx.ModelProto`` (opset
upgrade needs the proto) and run first; *graph* passes edit the gs IR in place.
A pass declares its level when it registers (``@register("normalize", name,
level="model")``; graph is the default).  The order is owned here, next to the
passes, not by the core driver.

Plugins: a normalization registered by another package (entry-point group
``spa_compiler.passes``) and not named below runs at :data:`PLUGINS` of its
level, in name order: model plugins after the opset upgrade, graph plugins once
constants are folded and shapes inferred, before initializers are unshared, the
graph cleaned and shapes inferred again for the analysis.
"""
from __future__ import annotations

PLUGINS = "<plugins>"

MODEL_PIPELINE = ("strip_initializer_inputs", "upgrade_opset", PLUGINS)
GRAPH_PIPELINE = ("constants_to_initializers", "castlike_constants", "lower_ml_scaler", "remove_identity",
                  "infer_shapes", "refuse_absurd_shapes", "sequence_split_to_split", "einsum_to_matmul",
                  "fold_weight_layouts", "infer_shapes", "fold_constants", "drop_zero_states", "matmul_nbits_2d_scales",
                  "group_norm_as_split",
                  PLUGINS, "unshare_initializers", "cleanup", "infer_shapes_symbolic", "refuse_inconsistent_weights")
