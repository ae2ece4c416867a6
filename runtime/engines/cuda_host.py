"""Page-locked (pinned) host memory for CUDA backends, through the CUDA runtime ONNX Runtime loads.

A host-to-device copy from pageable memory goes through a driver bounce buffer; from registered
(pinned) memory the GPU reads it directly. The scene pipeline's ring of batch buffers is
registered once per run, so every batch's copy in benefits. Without a CUDA runtime this does
nothing and says so; it never fails a run.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np

_SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
_runtime: ctypes.CDLL | None | bool = False  # False: not looked for yet


def _cudart() -> ctypes.CDLL | None:
    global _runtime
    if _runtime is False:
        _runtime = None
        for name in _SONAMES:
            try:
                library = ctypes.CDLL(name)
            except OSError:
                continue
            library.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
            library.cudaHostUnregister.argtypes = [ctypes.c_void_p]
            _runtime = library
            break
    return _runtime


def pin(array: np.ndarray) -> bool:
    """Register ``array``'s memory as pinned until the array is freed; False where that cannot be done."""
    runtime = _cudart()
    if runtime is None or not array.flags.c_contiguous or array.nbytes == 0:
        return False
    pointer = array.ctypes.data
    if runtime.cudaHostRegister(pointer, array.nbytes, 0) != 0:
        return False
    weakref.finalize(array, runtime.cudaHostUnregister, pointer)
    return True
