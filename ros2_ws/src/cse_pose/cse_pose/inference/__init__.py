"""Model runtimes behind one interface (docs/reference.md §D4).

``load_model(path, backend)`` returns an :class:`InferenceBackend` whose ``run(rgb_crops, masks)``
maps (B,3,S,S) RGB crops and (B,1,G,G) grid masks to vertices (B,N,3), match (B,G,G,3) and
confidence (B,G,G). Runtimes: onnxruntime with the TensorRT, CUDA or CPU execution provider, and
TorchScript (optional, needs torch). Depends on ``core`` (errors) and onnxruntime only.
"""

from .backend import InferenceBackend, ModelOutputs, check_inputs
from .loader import (
    BACKENDS,
    PRECISIONS,
    auto_candidates,
    file_sha256,
    find_models,
    int8_made_from,
    int8_path,
    load_model,
    load_models,
    model_file,
    warm_up,
)
from .model_info import (
    CONTRACT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    REQUIRED_KEYS,
    ModelError,
    ModelInfo,
    ProviderError,
    metadata_props,
    parse_metadata,
)
from .onnx_backend import OnnxBackend, OnnxOptions, available_providers, read_onnx_info, trt_cache_dir
from .torch_backend import TorchBackend, torchscript_path

__all__ = [
    "BACKENDS",
    "CONTRACT",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "REQUIRED_KEYS",
    "InferenceBackend",
    "ModelError",
    "ModelInfo",
    "ModelOutputs",
    "OnnxBackend",
    "OnnxOptions",
    "ProviderError",
    "TorchBackend",
    "auto_candidates",
    "available_providers",
    "check_inputs",
    "file_sha256",
    "find_models",
    "int8_made_from",
    "int8_path",
    "load_model",
    "load_models",
    "metadata_props",
    "model_file",
    "parse_metadata",
    "read_onnx_info",
    "torchscript_path",
    "trt_cache_dir",
    "warm_up",
]
