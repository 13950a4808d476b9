"""Packaging: the built-in passes install inside ``spa_compiler`` and every subpackage ships."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_prune_works_from_a_folder_with_its_own_passes_package(tmp_path, demo_path):
    """A user's unrelated ``passes/`` once shadowed the built-ins (ModuleNotFoundError: passes.normalize).

    Its ``normalize.py`` makes the clash visible under an editable install too, whose finder
    would otherwise locate the missing submodules in the checkout.
    """
    user_passes = tmp_path / "passes"
    user_passes.mkdir()
    (user_passes / "__init__.py").write_text('"""The user\'s own, unrelated passes package."""\n')
    (user_passes / "normalize.py").write_text("def normalize(text):\n    return text.lower()\n")
    out = tmp_path / "pruned.onnx"
    code = ("import spa_compiler\n"
            f"result = spa_compiler.prune({str(demo_path)!r}, ratio=0.3, output={str(out)!r})\n"
            "print(result.plan.n_removed)\n")
    # cwd comes first on sys.path for `python -c`, so `import passes` would find the user's folder.
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) > 0
    assert out.exists()


def test_builtin_passes_register_under_the_core_namespace():
    from spa_compiler.registry import all_passes

    origins = {info.origin for info in all_passes()}
    assert "spa_compiler.passes.criteria" in origins and "spa_compiler.passes.normalize" in origins
    assert not any(origin.startswith("passes.") for origin in origins)


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject lists packages by hand (passes/ maps onto spa_compiler.passes): a new subpackage must be added."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(module.parent.relative_to(ROOT).parts) for module in (ROOT / "spa_compiler").rglob("*.py")}
    missing_init = sorted(p for p in on_disk if not (ROOT / p.replace(".", "/") / "__init__.py").exists())
    assert not missing_init, f"folders of modules without __init__.py (a non-editable install drops them): {missing_init}"
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    for package, folder in config["package-dir"].items():
        assert (ROOT / folder / "__init__.py").exists() and package in listed
