"""optical_memory.hardware on this machine's CPU, and on the same CPU seen as AVX2-only through
``.ci/emulate-avx2`` (a real subprocess in which torch, oneDNN and the backends all see no AVX-512, AMX or
native bfloat16: the slowest CPU of this project's kind, which cannot be had here otherwise)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from optical_memory import hardware
from optical_memory.backends.deepseek import DeepseekOCRReader, OpticalMiniReader

EMULATE_AVX2 = Path(__file__).resolve().parents[1] / ".ci" / "emulate-avx2"
x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the speed flags are x86 flags")


def _listed_flags() -> set[str]:
    """The CPU's flags in /proc/cpuinfo, less those ``.ci/emulate-avx2`` hides when this runs under it."""
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    if os.environ.get("OPTICAL_MEMORY_EMULATED_CPU") == "avx2":
        flags = {flag for flag in flags if not flag.startswith(("avx512", "amx", "avx10"))}
    return flags


@x86_only
def test_flags_and_dtype_are_what_the_cpu_lists():
    flags = hardware.cpu_flags()
    listed = _listed_flags()
    assert flags == {flag: flag in listed for flag in hardware.SPEED_FLAGS}
    native = "avx512_bf16" in listed or "amx_bf16" in listed
    assert hardware.native_bfloat16() is native
    assert hardware.cpu_dtype() == ("bfloat16" if native else "float32")
    line = hardware.describe_cpu()
    assert line.startswith(hardware.cpu_name() + ": ")
    assert all(f"{flag} {'yes' if on else 'no'}" in line for flag, on in flags.items())
    assert line.endswith(f"-> {hardware.cpu_dtype()}")


def test_deepseek_runs_in_the_cpus_dtype_unless_told(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # resolving the folder reads nothing else
    assert DeepseekOCRReader(tmp_path).dtype == hardware.cpu_dtype()
    assert DeepseekOCRReader(tmp_path, dtype="bfloat16").dtype == "bfloat16"  # an explicit dtype wins
    assert DeepseekOCRReader(tmp_path, device="cuda").dtype == "bfloat16"  # only a CPU is asked
    assert OpticalMiniReader().dtype == "float32"  # optical-mini's own default, on any CPU


@x86_only
def test_an_avx2_only_cpu_gets_float32(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    probe = f"""
import json, torch
from optical_memory import hardware
from optical_memory.backends.deepseek import DeepseekOCRReader
print(json.dumps({{
    "flags": hardware.cpu_flags(),
    "dtype": hardware.cpu_dtype(),
    "reader": DeepseekOCRReader({str(tmp_path)!r}).dtype,
    "aten": torch.backends.cpu.get_cpu_capability(),
    "onednn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
}}))
"""
    out = subprocess.run(
        [str(EMULATE_AVX2), sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["flags"] == {"avx2": "avx2" in _listed_flags(), "avx512f": False, "avx512_bf16": False,
                             "amx_bf16": False}  # fmt: skip
    assert seen["dtype"] == seen["reader"] == "float32"
    assert seen["aten"] in ("AVX2", "DEFAULT")  # torch's own kernels capped too
    assert seen["onednn_bf16"] is False  # and oneDNN's: no bfloat16 matmul kernel, as on the EPYC
