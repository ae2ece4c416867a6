"""Serving: ``clay-serve`` (:mod:`.cli`), the KServe model and server (:mod:`.service`), dynamic
batching (:mod:`.batching`), the adaptations of KServe's internals (:mod:`.kserve_fixes`) and whole
scenes through ``POST /scene`` (:mod:`.scenes`). Takes chips through engines, as the Python API does,
and scenes through the Python API; never reads a chip itself.
"""
