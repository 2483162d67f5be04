"""The shape we keep: dependencies run sanjai_site -> chat -> inference.

Inside inference/, the model's maths (inference/model/) knows nothing of the
engine that schedules it, and the engine's settings (inference/engine/config.py)
import without torch, so the site's settings can read their defaults.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INFERENCE = ROOT / "inference"
MODULES = sorted(INFERENCE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _name(path: Path) -> str:
    return str(path.relative_to(INFERENCE))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_inference_imports_nothing_from_chat_the_site_or_django(path: Path) -> None:
    outward = {
        name for name in imported_modules(path) if name.split(".")[0] in {"chat", "sanjai_site", "django"}
    }
    assert outward == set()


@pytest.mark.parametrize("path", sorted((INFERENCE / "model").rglob("*.py")), ids=_name)
def test_the_model_maths_imports_nothing_from_the_engine(path: Path) -> None:
    assert not {name for name in imported_modules(path) if name.startswith("inference.engine")}


def test_the_engine_settings_import_without_torch() -> None:
    probe = "import sys, inference.engine.config; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
