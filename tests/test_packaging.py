"""The distribution installs `model/` and `adapters/` as optical_memory.model / optical_memory.adapters,
never as bare top-level packages: both from the editable install and from a built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, sys
out = {}
for name in ("optical_memory", "optical_memory.model", "optical_memory.adapters", "optical_memory.backends"):
    out[name] = importlib.import_module(name).__file__
for bare in ("model", "adapters"):
    try:
        importlib.import_module(bare)
        out[bare] = "importable"
    except ModuleNotFoundError:
        out[bare] = None
print(json.dumps(out))
"""


def probe(cwd: Path, env: dict[str, str] | None = None) -> dict[str, str | None]:
    import json

    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, env=env, check=True
    )
    return json.loads(run.stdout)


@pytest.mark.packaging
def test_editable_install_maps_model_and_adapters(tmp_path):
    found = probe(tmp_path)  # outside the repo, so the checkout itself is not on sys.path
    assert found["optical_memory.model"] == str(ROOT / "model" / "__init__.py")
    assert found["optical_memory.adapters"] == str(ROOT / "adapters" / "__init__.py")
    assert found["model"] is None and found["adapters"] is None


@pytest.mark.packaging
def test_built_wheel_maps_model_and_adapters(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("optical_memory-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "optical_memory/model/__init__.py" in names and "optical_memory/adapters/__init__.py" in names
    assert not [n for n in names if n.startswith(("model/", "adapters/"))]
    mini = "optical_memory/weights/optical-mini/"
    shipped = ("config.json", "model-00001-of-000001.safetensors", "tokenizer.json", "README.md")
    assert {mini + name for name in shipped} <= set(names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    found = probe(tmp_path, env)
    assert found["optical_memory.model"] == str(target / "optical_memory" / "model" / "__init__.py")
    assert found["optical_memory"] == str(target / "optical_memory" / "__init__.py")
    assert found["model"] is None and found["adapters"] is None
