"""Write the committed TorchScript control-flow exports into ``models/frameworks/torch_control_flow/``.

``torch.jit.script`` keeps Python ``if`` and ``for`` as ONNX ``If`` and ``Loop`` (what the legacy
exporter writes for data-dependent control flow): ``torch_if`` branches on ``h.mean() > 0.5`` between a
1x1 Conv + ReLU and a 3x3 Conv + Sigmoid (weights as outer initializers), ``torch_loop`` refines a feature
map ``H // 3`` times with a residual Conv.  A few KB each; tests/test_control_flow.py runs them without
torch.  Rebuild from an environment with torch::

    ../venv-torch/bin/python models/export_torch_control_flow.py
"""
from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent / "frameworks" / "torch_control_flow"


def main() -> None:
    import torch
    import torch.nn as nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(6, 4, 1)
            self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 6, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            if h.mean() > 0.5:
                y = torch.relu(self.a(h))
            else:
                y = torch.sigmoid(self.b(h)) * 2.0
            return self.head(y)

    class Loopy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), \
                nn.Conv2d(8, 4, 1)

        def forward(self, x):
            h = self.stem(x)
            for _ in range(int(x.shape[2]) // 3):
                h = h + torch.relu(self.body(h))
            return self.head(h)

    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, module in (("torch_if", Branchy()), ("torch_loop", Loopy())):
        torch.onnx.export(torch.jit.script(module.eval()), (torch.randn(1, 3, 6, 6),), str(OUT / f"{name}.onnx"),
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}}, opset_version=17,
                          dynamo=False)


if __name__ == "__main__":
    main()
