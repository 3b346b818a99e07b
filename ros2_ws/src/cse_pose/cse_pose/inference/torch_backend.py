"""TorchScript runtime (optional): ``<stem>.pt`` saved with ``torch.jit.save(..., _extra_files=...)``.

The metadata travels in the extra file ``metadata.json`` (the same keys as the ONNX ``metadata_props``;
values may be strings or native JSON). ``forward(rgb, mask)`` returns ``(vertices, match, confidence)``
or a dict with those keys.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .backend import ModelOutputs, check_inputs, empty_outputs
from .model_info import OUTPUT_NAMES, ModelError, ModelInfo, parse_metadata

METADATA_FILE = "metadata.json"


def torchscript_path(path: str | Path) -> Path:
    """The TorchScript file for a model path: ``x.onnx`` -> ``x.pt``; a ``.pt`` path is kept."""
    path = Path(path)
    return path if path.suffix == ".pt" else path.with_suffix(".pt")


class TorchBackend:
    """A TorchScript model on CPU or one CUDA device."""

    def __init__(self, module, info: ModelInfo, device: str) -> None:
        self._module = module
        self.info = info
        self.device = device
        self.name = f"torch-{device}"

    def run(self, rgb_crops: np.ndarray, masks: np.ndarray) -> ModelOutputs:
        """See :meth:`InferenceBackend.run`."""
        import torch

        rgb, mask = check_inputs(self.info, rgb_crops, masks)
        if rgb.shape[0] == 0:
            return empty_outputs(self.info)
        with torch.inference_mode():
            out = self._module(torch.from_numpy(rgb).to(self.device), torch.from_numpy(mask).to(self.device))
        if isinstance(out, dict):
            missing = [k for k in OUTPUT_NAMES if k not in out]
            if missing:
                raise ModelError(self.info.path, f"forward() returned a dict without {missing}")
            out = [out[k] for k in OUTPUT_NAMES]
        if not isinstance(out, list | tuple) or len(out) != 3:
            raise ModelError(self.info.path, "forward() must return (vertices, match, confidence)")
        v, m, c = (t.detach().float().cpu().numpy() for t in out)
        return v, m, c


def open_torch(path: str | Path, device_id: int = 0, prefer_cuda: bool = True) -> TorchBackend:
    """Load ``<stem>.pt`` with ``torch.jit.load`` on ``cuda:<device_id>`` when available, else CPU.

    Raises:
        ModelError: torch is not installed, the file is missing or not TorchScript, or its metadata is
            missing or malformed.
    """
    pt = torchscript_path(path)
    try:
        import torch
    except ImportError as exc:
        raise ModelError(pt, "backend 'torch' needs PyTorch, which is not installed") from exc
    if not pt.is_file():
        raise ModelError(pt, "TorchScript file does not exist (export it next to the .onnx as <stem>.pt)")
    device = f"cuda:{device_id}" if prefer_cuda and torch.cuda.is_available() else "cpu"
    extra = {METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; it still loads fine
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(pt), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/pickle errors
        raise ModelError(pt, f"not a loadable TorchScript file ({str(exc).splitlines()[0]})") from exc
    raw = extra[METADATA_FILE]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not raw:
        raise ModelError(pt, f"no {METADATA_FILE!r} extra file with the contract metadata")
    try:
        props = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(pt, f"{METADATA_FILE!r} is not valid JSON: {exc}") from exc
    if not isinstance(props, dict):
        raise ModelError(pt, f"{METADATA_FILE!r} must hold a JSON object")
    module.eval()
    return TorchBackend(module, parse_metadata(props, pt), device)
