"""The layout the job system promises: `service/` (HTTP) and `worker/` (compute) share `jobs/` and never
import each other; `jobs/` never imports torch (a reaper or a tool may use it without the model stack)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of `package` imports (absolute imports; relative ones stay inside)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"), [("service", {"worker"}), ("worker", {"service"}), ("jobs", {"service", "worker"})]
)
def test_packages_do_not_import_each_other(package, forbidden):
    offenders = {module: names & forbidden for module, names in imported_packages(package).items() if names & forbidden}
    assert not offenders, offenders


def test_the_job_system_loads_without_torch():
    code = "import sys, jobs.store, jobs.reaper, jobs.webhooks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
