"""TensorRT plans (``tensorrt``): a serialized plan opened with the TensorRT flavour that built it,
run with CUDA buffers allocated once. Whether a plan can run here at all is
:mod:`~clay.runtime.engines.tensorrt_plan`'s to say, before this module is used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats import plan_runtime_cache
from ..metadata import EngineMetadata
from .base import Engine, EngineError, EngineUnavailable
from .tensorrt_plan import (
    FLAVOURS,
    RTX,
    PlanBuild,
    RuntimeCacheFile,
    capturing_logger,
    import_cudart,
    import_flavour,
)


class TensorRTEngine(Engine):
    """A serialized TensorRT plan (+ its ``.json`` metadata sidecar), opened with the flavour that
    built it (TensorRT-RTX, or standard TensorRT 10/11: the same runtime API).

    Device buffers for the profile's largest batch and page-locked host buffers are allocated once;
    every call copies in, runs and copies out asynchronously on one CUDA stream. A TensorRT-RTX
    plan's runtime cache (kernels specialised for this GPU at first run) is read from
    ``runtime_cache`` and written back on :meth:`close`. Call :func:`open_engine`, which first checks
    that the plan can run here (:func:`~clay.runtime.engines.tensorrt_plan.plan_unusable_reason`).
    """

    def __init__(self, path: Path, metadata: EngineMetadata, runtime_cache: Path | None = None) -> None:
        super().__init__()
        build = PlanBuild.of(metadata)
        try:
            trt, self._cudart = import_flavour(build.flavour), import_cudart()
        except ImportError as exc:
            raise EngineUnavailable(f"{path}: {exc} ({FLAVOURS[build.flavour].install})") from None
        self.backend, self.path, self.metadata, self.build = "tensorrt", path, metadata, build
        self._logger = capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)  # kept: the engine is used while its runtime lives
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineUnavailable(f"{path}: {build.label} cannot deserialize it ({self._logger.first_error()})")
        self.runtime_cache = None
        if build.flavour == RTX:
            self.runtime_cache = RuntimeCacheFile(self._engine, runtime_cache or plan_runtime_cache(path))
            self._context = self._engine.create_execution_context(self.runtime_cache.config)
        else:
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineUnavailable(f"{path}: {build.label} cannot create an execution context ({self._logger.first_error()})")
        self._stream = _cuda_check(self._cudart.cudaStreamCreate())
        _, opt, max_shape = self._engine.get_tensor_profile_shape("pixels", 0)
        self.preferred_batch, self._max_batch = int(opt[0]), int(max_shape[0])
        self._names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._outputs = [n for n in self._names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._host, self._device = {}, {}
        shapes = self._max_shapes()
        for name in self._names:
            nbytes = int(np.prod(shapes[name])) * 4
            self._device[name] = _cuda_check(self._cudart.cudaMalloc(nbytes))
            pointer = _cuda_check(self._cudart.cudaMallocHost(nbytes))
            self._host[name] = np.ctypeslib.as_array(
                (np.ctypeslib.ctypes.c_float * (nbytes // 4)).from_address(pointer)
            )
            self._context.set_tensor_address(name, self._device[name])

    def describe(self) -> str:
        return f"{super().describe()}, {self.build.label}"

    def _max_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {**self.metadata.input_shapes, **self.metadata.output_shapes}
        return {name: (self._max_batch, *shape) for name, shape in shapes.items()}

    def _infer(self, pixels, lonlat, date):
        cudart, batch = self._cudart, pixels.shape[0]
        if batch > self._max_batch:
            raise EngineError(f"batch {batch} exceeds the plan's optimisation profile maximum {self._max_batch}")
        kind = cudart.cudaMemcpyKind
        for name, array in (("pixels", pixels), ("lonlat", lonlat), ("date", date)):
            self._context.set_input_shape(name, array.shape)
            host = self._host[name][: array.size]
            host[:] = array.ravel()
            _cuda_check(cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, array.nbytes,
                                               kind.cudaMemcpyHostToDevice, self._stream))  # fmt: skip
        if not self._context.execute_async_v3(int(self._stream)):
            raise EngineError(f"TensorRT execution failed ({self._logger.first_error()})")
        results = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            host = self._host[name][: int(np.prod(shape))]
            _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes,
                                               kind.cudaMemcpyDeviceToHost, self._stream))  # fmt: skip
            results[name] = host.reshape(shape)
        _cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return {name: array.copy() for name, array in results.items()}

    def _release(self) -> None:
        if self.runtime_cache is not None:
            self.runtime_cache.save()
        for pointer in self._device.values():
            self._cudart.cudaFree(pointer)
        for array in self._host.values():
            self._cudart.cudaFreeHost(array.ctypes.data)
        self._cudart.cudaStreamDestroy(self._stream)
        self._host, self._device = {}, {}
        del self._context, self._engine


def _cuda_check(result):
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise EngineError(f"CUDA error {error}")
    return values[0] if values else None
