"""Loaded by every Python process started under `.ci/emulate-avx2`: torch's CPU detection (``torch.cpu``,
which vLLM dispatches on) reports no AVX-512, AMX or AVX10, so vLLM loads its AVX2 kernels, picks no AMX
paths, and ``optical_memory.hardware`` sees no native bfloat16, as on an AVX2-only AMD EPYC. The flags
themselves are read by the CPU; this only changes what torch says of them."""

import importlib.abc
import importlib.machinery
import sys

_HIDDEN = ("avx512", "amx", "avx10")


class _HideWideVectors(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            real = module.get_capabilities
            module.get_capabilities = lambda: {
                key: (False if key.startswith(_HIDDEN) else value) for key, value in real().items()
            }

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _HideWideVectors())
