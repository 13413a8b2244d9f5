"""What this CPU computes fast: its name, the instruction sets that decide how fast torch, oneDNN and vLLM
run on it, and the dtype a model should run in on it.

Machines of one kind differ. On an Intel Xeon with AMX, bfloat16 matmuls run ~20x faster than on an AMD EPYC
with AVX2 only, where oneDNN has no bfloat16 kernel and torch falls back to converting every tile (measured:
740 vs 33 GFLOP/s for a 4096x1024x1024 matmul), so a model that is fastest in bfloat16 on one CPU is
fastest in float32 on the other. The answers come from torch's own CPU detection (``torch.cpu``), the one
torch and vLLM dispatch their kernels on, so what is reported here is what runs; on a torch without it,
from ``/proc/cpuinfo``.
"""

from __future__ import annotations

import functools
import platform

#: The flags that decide a model's speed on x86, in /proc/cpuinfo's spelling, with torch.cpu's name for each.
SPEED_FLAGS = {"avx2": "avx2", "avx512f": "avx512_f", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}


@functools.cache
def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name and architecture, e.g. ``'Intel(R) Xeon(R) Processor (x86_64)'``."""
    name = _proc_cpuinfo().get("model name") or platform.processor() or "unknown CPU"
    return f"{name} ({platform.machine()})"


def cpu_flags() -> dict[str, bool]:
    """Each of :data:`SPEED_FLAGS`: whether torch will use it on this CPU (False on other architectures)."""
    import torch  # here, not at import: the CLI's start-up should not pay for it

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return {flag: bool(found.get(name, False)) for flag, name in SPEED_FLAGS.items()}
    listed = set(_proc_cpuinfo().get("flags", "").split())
    return {flag: flag in listed for flag in SPEED_FLAGS}


def native_bfloat16() -> bool:
    """Whether the CPU has bfloat16 arithmetic of its own (AVX512-BF16 or AMX on x86, BF16 on Arm), so that
    bfloat16 matmuls run faster than float32 ones rather than many times slower."""
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in _proc_cpuinfo().get("Features", "").split()
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def cpu_dtype() -> str:
    """The dtype a model this project ships or loads should run in on this CPU: bfloat16 where it is native,
    float32 where it is not."""
    return "bfloat16" if native_bfloat16() else "float32"


def describe_cpu() -> str:
    """One line for logs and CI: the CPU, its speed flags, and the dtype it gets, e.g.
    ``'AMD EPYC 7B13 (x86_64): avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no; bfloat16 not native ->
    float32'``."""
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in cpu_flags().items())
    native = "native" if native_bfloat16() else "not native"
    return f"{cpu_name()}: {flags}; bfloat16 {native} -> {cpu_dtype()}"
