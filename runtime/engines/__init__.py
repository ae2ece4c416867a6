"""Engines: a loaded Clay encoder behind one small interface (:mod:`.base`), one module per backend
(ONNX Runtime, TensorRT, OpenVINO), and the backend choice on top of them (:mod:`.choice`:
``open_engine``), with what a TensorRT plan needs to run, pinned host memory and CPU facts.
Imports only the shared contract, never scenes, outputs, serving or the pipeline.
"""
