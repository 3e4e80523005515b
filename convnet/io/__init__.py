"""Files in and out: safetensors weights with dotted keys, model JSON, atomic writes,
PyTorch checkpoints read without torch and without running pickle, ONNX export and import."""

from convnet.io.onnx_export import export_onnx
from convnet.io.onnx_import import load_onnx
from convnet.io.torch_file import load_torch
from convnet.io.weights import atomic_write, load_model, load_tensors, save_model, save_tensors

__all__ = ["atomic_write", "save_tensors", "load_tensors", "save_model", "load_model",
           "load_torch", "export_onnx", "load_onnx"]
