"""The public surface: ``__all__`` lists exactly the public names, and the package example runs."""

from __future__ import annotations

import doctest
import importlib
import types

import pytest
import tallystick.verifier

PUBLIC_MODULES = [
    "aip",
    "billing",
    "canonical",
    "checkpoint",
    "coin",
    "errors",
    "hdp",
    "invoice",
    "keys",
    "logbundle",
    "logentry",
    "merkle",
    "pricing",
    "provenance",
    "report",
    "usage",
]


def test_package_exports_the_task_named_modules() -> None:
    assert sorted(tallystick.verifier.__all__) == sorted(["__version__", *PUBLIC_MODULES])


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_module_all_matches_public_names(name: str) -> None:
    module = importlib.import_module(f"tallystick.verifier.{name}")
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module.__name__) == module.__name__
        and (callable(value) or attr.isupper())
    }
    assert public <= set(module.__all__), (
        f"public but not in __all__: {public - set(module.__all__)}"
    )
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_package_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(tallystick.verifier, verbose=False)
    assert tried >= 8
    assert failures == 0
