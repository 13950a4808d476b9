"""OBSPA: layer statistics, their Hessian sources, Optimal Brain Surgeon costs, compensation, recalibration.

- :mod:`.statistics` streams (or derives) the second moment of every consumer layer's input;
  its data-free sources are :mod:`.noise` (synthetic inputs) and :mod:`.moments` (closed form
  from BatchNorm parameters).
- :mod:`.obs` holds the OBS algebra (Hessians exact or at channel granularity, compensation, damped inverses);
  :mod:`.greedy` the per-consumer state of the greedy ranking (costs and joint downdates).
- :mod:`.compensate` folds the removed channels' contribution into the kept weights.
- :mod:`.recalibrate` re-estimates BatchNorm statistics of the pruned model on calibration data.
- :mod:`.blas` runs the many small matrices with one BLAS thread (spinning threads cost more than them).

The criterion pass that ranks with these costs is ``spa_compiler.passes.obspa``.
"""
