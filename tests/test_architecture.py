"""Layering rules: the verifier is the pure core an auditor installs alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERIFIER_FILES = sorted((REPO / "verifier").rglob("*.py"))
FORBIDDEN = ("grpc", "torch", "sqlite_utils", "structlog", "tallystick.daemon", "tallystick.sdk")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_verifier_files_exist() -> None:
    assert len(VERIFIER_FILES) >= 5


@pytest.mark.parametrize("path", VERIFIER_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_verifier_imports_nothing_from_upper_layers(path: Path) -> None:
    for name in _imports(path):
        assert not any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN), (
            f"{path.relative_to(REPO)} imports {name}"
        )
        assert not name.startswith(("daemon", "sdk")), f"{path.relative_to(REPO)} imports {name}"
