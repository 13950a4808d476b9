"""Latency-aware planning (issue 16): per-layer latency tables measured in onnxruntime, a planner that
spends the budget where measured time drops, and the dense-vs-pruned speed check (docs/latency.md)."""
