"""What a .tflite embedder looks like from the interpreter, and whether TensorFlow is here.

Shared by the import (:mod:`edge.vision.model_import`) and the quantisation
(:mod:`edge.vision.model_quantise`), which both read it; it imports neither, so the two
no longer import each other (``tests/test_layout.py`` forbids circles).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError, UsageError


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a .tflite embedder looks like from the interpreter."""

    batch: int
    size: int
    input_dtype: str
    input_quantization: tuple[float, int] | None
    input_name: str
    dim: int
    output_shape: list[int]
    output_dtype: str
    output_name: str
    precision: str

    def io(self) -> dict[str, Any]:
        inp: dict[str, Any] = {
            "name": self.input_name,
            "shape": [self.batch, self.size, self.size, 3],
            "dtype": self.input_dtype,
            "normalisation_in_model": self.input_dtype == "uint8",
        }
        if self.input_quantization is not None:
            inp["quantization"] = list(self.input_quantization)
        out = {"name": self.output_name, "shape": self.output_shape, "dtype": self.output_dtype}
        return {"input": inp, "output": out}


def inspect_embedder(path: Path) -> ModelFacts:
    """Load ``path`` and check it is a single-input image embedder; a ModelError if not."""
    from edge.vision.runtime import load_interpreter

    if path.suffix.lower() != ".tflite":
        raise UsageError(f"{path}: expected a .tflite file")
    interp = load_interpreter(path, 1)
    ins = interp.get_input_details()
    outs = interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ModelError(
            f"{path} has {len(ins)} inputs and {len(outs)} outputs; an embedder has one of each"
        )
    shape = [int(v) for v in ins[0]["shape"]]
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[0] < 1:
        raise ModelError(f"{path} takes {shape}; an embedder takes [batch, S, S, 3] images")
    oshape = [int(v) for v in outs[0]["shape"]]
    if oshape[0] != shape[0] or int(np.prod(oshape[1:])) < 2 or len(oshape) < 2:
        raise ModelError(f"{path} outputs {oshape}; an embedder outputs [batch, D]")
    idtype = np.dtype(ins[0]["dtype"]).name
    odtype = np.dtype(outs[0]["dtype"]).name
    if idtype not in ("float32", "uint8", "int8") or odtype not in ("float32", "uint8", "int8"):
        raise ModelError(f"{path}: input {idtype} / output {odtype} are not supported")
    scale, zp = ins[0].get("quantization", (0.0, 0))
    iq = (float(scale), int(zp)) if float(scale) != 0.0 else None
    io_index = {int(ins[0]["index"]), int(outs[0]["index"])}
    kinds = {
        np.dtype(d["dtype"]).name
        for d in _tensor_details(interp)
        if int(d["index"]) not in io_index
    }
    precision = "int8" if {"int8", "uint8"} & kinds else "float16" if "float16" in kinds else (
        "float32"
    )
    return ModelFacts(
        batch=shape[0],
        size=shape[1],
        input_dtype=idtype,
        input_quantization=iq,
        input_name=str(ins[0]["name"]),
        dim=int(np.prod(oshape[1:])),
        output_shape=oshape,
        output_dtype=odtype,
        output_name=str(outs[0]["name"]),
        precision=precision,
    )


def _tensor_details(interp: Any) -> list[dict[str, Any]]:
    try:
        details: list[dict[str, Any]] = interp.get_tensor_details()
    except (AttributeError, ValueError, RuntimeError):
        return []
    return details
