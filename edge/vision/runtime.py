"""The TFLite runtime: load an interpreter once, run it with generic (de)quantisation.

``load_interpreter`` prefers ``ai_edge_litert`` (LiteRT) and falls back to
``tflite_runtime``. :class:`TFLiteModel` wraps one interpreter: it quantises a
float input to the model's input dtype with the tensor's scale/zero-point
(or passes a uint8 image straight through to a uint8 model), runs, and returns
dequantised float32 outputs. Tensors are allocated once and reused.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class Interpreter(Protocol):
    """The subset of the TFLite ``Interpreter`` API this package uses."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> list[dict[str, Any]]: ...
    def get_output_details(self) -> list[dict[str, Any]]: ...
    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...
    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...
    def invoke(self) -> None: ...
    def resize_tensor_input(self, input_index: int, tensor_size: Any) -> None: ...


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter as LiteRT

        return LiteRT
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as TFLiteRuntime

        return TFLiteRuntime
    except ImportError:
        raise ModelError(
            "no TFLite runtime: install ai-edge-litert (or tflite-runtime where it has no wheel)"
        ) from None


def load_interpreter(path: str | Path, threads: int = 2) -> Interpreter:
    """Load and allocate a ``.tflite`` model; a missing or corrupt file is a ModelError."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {p} is missing")
    cls = _interpreter_class()
    try:
        interp = cls(model_path=str(p), num_threads=max(1, int(threads)))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file {p} is not a usable TFLite model: {first}") from None
    return cast(Interpreter, interp)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: type[np.generic]
    scale: float
    zero_point: int

    @property
    def quantised(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorSpec:
        scale, zp = d.get("quantization", (0.0, 0))
        return cls(
            index=int(d["index"]),
            name=str(d["name"]),
            shape=tuple(int(x) for x in d["shape"]),
            dtype=cast(type[np.generic], np.dtype(d["dtype"]).type),
            scale=float(scale),
            zero_point=int(zp),
        )


class TFLiteModel:
    """One loaded model with typed input/output specs; thread-safe ``run``.

    ``run(x)`` takes a batch-shaped array for the (single) input:

    * a float array is quantised when the input tensor is int8/uint8
      (``q = round(x / scale) + zero_point``, clipped), else cast to float32;
    * an array already in the input's dtype is passed through unchanged (a uint8
      image into a uint8 model); a uint8 image into an int8 model is treated as
      real values and quantised (with scale 1, zero point -128 that is ``x - 128``).

    Outputs come back as float32 (dequantised when quantised), in the model's
    output order unless ``output_order`` names them.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 2,
        output_order: list[str] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interpreter = load_interpreter(self.path, threads)
        ins = [TensorSpec.from_details(d) for d in self.interpreter.get_input_details()]
        if len(ins) != 1:
            raise ModelError(f"model file {self.path} has {len(ins)} inputs, expected 1")
        if input_shape is not None and tuple(input_shape) != ins[0].shape:
            self._resize_input(ins[0], tuple(int(v) for v in input_shape))
            ins = [TensorSpec.from_details(d) for d in self.interpreter.get_input_details()]
        self.input = ins[0]
        outs = [TensorSpec.from_details(d) for d in self.interpreter.get_output_details()]
        if output_order:
            by_name = {o.name: o for o in outs}
            missing = [n for n in output_order if n not in by_name]
            if missing:
                raise ModelError(f"model file {self.path} has no output named {missing[0]}")
            outs = [by_name[n] for n in output_order]
        self.outputs = outs
        self._lock = threading.Lock()

    def _resize_input(self, spec: TensorSpec, shape: tuple[int, ...]) -> None:
        """Resize a dynamic input (``shape_signature`` -1 where ``shape`` differs) once."""
        sig = self.interpreter.get_input_details()[0].get("shape_signature")
        fixed = [int(v) for v in (sig if sig is not None else spec.shape)]
        if len(fixed) != len(shape) or any(
            f not in (-1, s) for f, s in zip(fixed, shape, strict=True)
        ):
            raise ModelError(
                f"model file {self.path} takes input {tuple(fixed)}, cannot run at {shape}"
            )
        try:
            self.interpreter.resize_tensor_input(spec.index, list(shape))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model file {self.path} cannot run at {shape}: {exc}") from None

    def quantise_input(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        spec = self.input
        if x.dtype == spec.dtype:
            return x
        if spec.dtype is np.float32:
            return x.astype(np.float32)
        if spec.quantised:
            info = np.iinfo(np.dtype(spec.dtype).name)
            q = np.round(x.astype(np.float32) / spec.scale) + spec.zero_point
            out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(spec.dtype)
            return out
        return x.astype(spec.dtype)

    def run(self, x: npt.NDArray[Any]) -> list[F32]:
        if tuple(x.shape) != self.input.shape:
            raise ValueError(f"input shape {x.shape} != model input {self.input.shape}")
        data = self.quantise_input(x)
        with self._lock:
            self.interpreter.set_tensor(self.input.index, data)
            self.interpreter.invoke()
            raw = [self.interpreter.get_tensor(o.index) for o in self.outputs]
        result: list[F32] = []
        for o, r in zip(self.outputs, raw, strict=True):
            if o.quantised:
                result.append(((r.astype(np.float32) - o.zero_point) * o.scale).astype(np.float32))
            else:
                result.append(np.array(r, dtype=np.float32, copy=True))
        return result


_CACHE: dict[tuple[str, int, tuple[int, ...] | None], TFLiteModel] = {}
_CACHE_LOCK = threading.Lock()


def shared_model(
    path: str | Path, threads: int = 2, input_shape: tuple[int, ...] | None = None
) -> TFLiteModel:
    """A process-wide :class:`TFLiteModel` per (resolved path, threads, input shape): models
    load once. ``input_shape`` resizes a model whose input is dynamic (RetinaFace)."""
    key = (str(Path(path).resolve()), int(threads), input_shape)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = TFLiteModel(path, threads, input_shape=input_shape)
            _CACHE[key] = model
            log.debug("loaded model %s", key[0])
        return model
