"""The docstring examples are part of the suite: every module of the product's stage, record,
LLM-machinery and process packages is run through `doctest`, and the public operators must
have an example (as Bytewax's own `collect` and `fold_window` do).

Explicit rather than `--doctest-modules`, so the set of packages is stated here.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("operators", "core", "inference", "runtime")

WITH_EXAMPLES = {
    "operators.validate": ("decode_validate",),
    "operators.redact": ("redact",),
    "operators.dedup": ("dedup",),
    "operators.anomaly": ("detect_anomalies",),
    "operators.memory": ("remember", "remember_erasing"),
    "operators.erasure": ("parse_erasures",),
    "operators.enrich": ("attach_profiles",),
    "operators.route": ("route",),
    "operators.llm": ("call_llm",),
    "operators.publish": ("publish", "publish_batches"),
    "runtime.process": ("progress_line",),
}
"""Modules whose named functions must carry a runnable example."""


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            names.append(info.name)
    return sorted(names)


def run_doctests(module: ModuleType) -> tuple[dict[str, int], str]:
    """Attempted examples per docstring (by qualified name) and the failure report."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    attempted: dict[str, int] = {}
    for test in finder.find(module):
        result = runner.run(test, out=out.write)
        attempted[test.name] = result.attempted
    return attempted, out.getvalue() if runner.failures else ""


def test_every_package_is_collected() -> None:
    found = modules()
    assert set(WITH_EXAMPLES) <= set(found)
    assert {"operators.anomaly.series", "inference.client", "core.clock"} <= set(found)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_pass(name: str) -> None:
    module = importlib.import_module(name)
    attempted, failures = run_doctests(module)
    assert not failures, failures
    for func in WITH_EXAMPLES.get(name, ()):
        assert attempted.get(f"{name}.{func}", 0) > 0, f"{name}.{func} has no example"
