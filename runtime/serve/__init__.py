"""Serving: ``clay-serve`` (:mod:`.cli`), the KServe model and server (:mod:`.service`), dynamic
batching (:mod:`.batching`) and the adaptations of KServe's internals (:mod:`.kserve_fixes`). Takes
chips through engines, as the Python API does; never reads scenes itself.
"""
