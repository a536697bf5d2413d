"""Heavy packages stay lazy: `--help` and `import mlflow_weightviz` import neither mlflow, matplotlib nor torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("mlflow", "matplotlib", "torch", "lightning", "keras", "tensorflow", "transformers", "dask", "PIL")

PROBE = """
import json, sys
{body}
heavy = {heavy!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def loaded_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_is_light() -> None:
    assert loaded_after("import mlflow_weightviz\nmlflow_weightviz.RenderOptions()\nmlflow_weightviz.UsageError") == []


@pytest.mark.slow
def test_the_probe_sees_a_heavy_import() -> None:
    # The check above could pass vacuously; make sure it notices a heavy import when one happens.
    assert "mlflow" in loaded_after("from mlflow_weightviz import _tracking\n_tracking.client('sqlite:///:memory:')")


@pytest.mark.parametrize("argv", [["--help"], ["render", "--help"], ["render-file", "--help"], ["inspect", "--help"],
                                  ["--version"]])
def test_cli_help_is_light(argv: list[str]) -> None:
    body = f"""
sys.argv = ["mlflow-weightviz", *{argv!r}]
from mlflow_weightviz.cli import main
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
"""
    assert loaded_after(body) == []
