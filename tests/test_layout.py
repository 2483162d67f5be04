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


# --- chat/: no import cycles, and one writer of a reply's status -----------------

CHAT = ROOT / "chat"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def chat_import_graph() -> dict[str, set[str]]:
    """Each chat module and the chat modules it imports, at any depth of the file
    (a function-level import counts: it is a dependency all the same)."""
    modules = {_module_name(path): path for path in CHAT.rglob("*.py") if "migrations" not in path.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets.add(node.module)
                # `from chat.lifecycle import dispatch` imports the module chat.lifecycle.dispatch.
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def test_chat_has_no_import_cycles() -> None:
    graph = chat_import_graph()
    assert "chat.lifecycle.dispatch" in graph["chat.lifecycle.submit"]  # the graph sees what it should
    cycles = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _another_models_status(value: ast.expr) -> bool:
    """`Document.Status.READY` and the like: a status, but not a reply's."""
    written = ast.unparse(value)
    return ".Status." in written and not written.startswith("Message.")


def status_writes(path: Path) -> list[int]:
    """Lines that write a Message's status: `status=` in an update(), a create() or
    Message(), a {"status": Message.Status...} mapping (fields splatted into
    one), or an assignment to a `.status` attribute, except the creation of
    messages finished from the start (a user's question, an imported message:
    status=Message.Status.DONE)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign | ast.AugAssign):  # message.status = ... (then a save)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # Not `self.status`: an exception's or a response's own HTTP status.
            if any(
                isinstance(t, ast.Attribute)
                and t.attr == "status"
                and not (isinstance(t.value, ast.Name) and t.value.id == "self")
                for t in targets
            ):
                lines.append(node.lineno)
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "status"
                    and "Status." in ast.unparse(value)
                ):
                    lines.append(node.lineno)
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if callee not in ("update", "create", "Message"):
            continue
        for keyword in node.keywords:
            if keyword.arg != "status" or _another_models_status(keyword.value):
                continue
            done = ast.unparse(keyword.value).endswith("Status.DONE")
            if callee == "update" or not done:
                lines.append(node.lineno)
    return lines


def test_only_the_status_module_writes_a_replys_status() -> None:
    writers = {
        str(path.relative_to(ROOT)): lines
        for path in CHAT.rglob("*.py")
        if "migrations" not in path.parts and (lines := status_writes(path))
    }
    assert set(writers) == {"chat/lifecycle/status.py"}, writers
