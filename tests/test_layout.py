"""The shape we keep: dependencies run sanjai_site -> chat -> inference."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INFERENCE = Path(__file__).resolve().parent.parent / "inference"
# The modules that touch the model: they take plain arguments, never Django settings.
MODEL_FACING = [
    "engine.py", "fastpath.py", "loading.py", "prompt.py", "backend.py", "params.py", "types.py",
    "registry.py", "remote.py",
]  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(INFERENCE.glob("*.py")), ids=lambda path: path.name)
def test_inference_imports_nothing_from_chat_or_the_site(path: Path) -> None:
    outward = {name for name in imported_modules(path) if name.split(".")[0] in {"chat", "sanjai_site"}}
    assert outward == set()


@pytest.mark.parametrize("name", MODEL_FACING)
def test_the_model_facing_modules_read_no_django_settings(name: str) -> None:
    assert not {module for module in imported_modules(INFERENCE / name) if module.startswith("django")}
