"""Inference backends (TensorRT, ONNX Runtime, PyTorch): the only place GPU runtimes are imported."""
