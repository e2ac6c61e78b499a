"""dlib's face ResNet as a TensorFlow graph, converted to TFLite (build only: needs TF).

Conv + affine are folded into one conv; the input normalisation
``(pixel - mean) / 256`` is folded into the first conv (exact: that conv is
VALID, so there is no zero padding that would see the shift). The model takes
RGB pixel values 0..255: the float model as a uint8 tensor (a CAST inside),
the int8 model as a uint8 tensor quantised with scale 1, zero point 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from models.build import dlib_dat as d


def _folded_first(net: d.DlibNet, conv: d.Conv, aff: d.Affine) -> tuple[np.ndarray, np.ndarray]:
    w, b = d.fold_conv_affine(conv, aff)
    if conv.padding != (0, 0):
        raise d.DatError("first conv is padded: normalisation cannot be folded exactly")
    m = np.asarray(net.input.means, np.float64)
    w64 = w.astype(np.float64)
    b2 = b.astype(np.float64) - np.einsum("oihw,i->o", w64, m) / 256.0
    return (w64 / 256.0).astype(np.float32), b2.astype(np.float32)


def _pad_to(x: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    h, w, c = (int(v) for v in x.shape[1:])
    if (h, w, c) == shape:
        return x
    return tf.pad(x, [[0, 0], [0, shape[0] - h], [0, shape[1] - w], [0, shape[2] - c]])


def make_forward(
    net: d.DlibNet, variant: str = "fold"
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Return f(x_float_pixels NHWC RGB 0..255) -> (N, 128) float32."""
    layers = net.layers
    del variant

    def f(x: tf.Tensor) -> tf.Tensor:
        tags: dict[int, tf.Tensor] = {}
        first = True
        i = 0
        while i < len(layers):
            lay = layers[i]
            if isinstance(lay, d.Conv):
                aff = layers[i + 1]
                assert isinstance(aff, d.Affine)
                if first:
                    w, b = _folded_first(net, lay, aff)
                    first = False
                else:
                    w, b = d.fold_conv_affine(lay, aff)
                k = w.shape[2]
                if lay.padding == (0, 0):
                    pad = "VALID"
                elif lay.stride == (1, 1) and lay.padding == (k // 2, k // 2):
                    pad = "SAME"
                else:
                    raise d.DatError(f"unsupported padding {lay.padding} stride {lay.stride}")
                x = tf.nn.conv2d(
                    x,
                    tf.constant(np.transpose(w, (2, 3, 1, 0))),
                    strides=[1, lay.stride[0], lay.stride[1], 1],
                    padding=pad,
                )
                x = tf.nn.bias_add(x, tf.constant(b))
                i += 2
                continue
            if isinstance(lay, d.Relu):
                x = tf.nn.relu(x)
            elif isinstance(lay, d.Pool):
                if lay.size == (0, 0):
                    x = tf.reduce_mean(x, axis=[1, 2])
                elif lay.kind == "max":
                    x = tf.nn.max_pool2d(x, lay.size, lay.stride, "VALID")
                else:
                    x = tf.nn.avg_pool2d(x, lay.size, lay.stride, "VALID")
            elif isinstance(lay, d.TagOrSkip):
                if lay.kind == "tag":
                    tags[lay.tag] = x
                else:
                    x = tags[lay.tag]
            elif isinstance(lay, d.AddPrev):
                y = tags[lay.tag]
                shape = tuple(
                    max(int(a), int(b)) for a, b in zip(x.shape[1:], y.shape[1:], strict=True)
                )
                x = tf.add(_pad_to(x, shape), _pad_to(y, shape))  # type: ignore[arg-type]
            elif isinstance(lay, d.FC):
                x = tf.matmul(tf.reshape(x, [-1, lay.weight.shape[0]]), tf.constant(lay.weight))
            i += 1
        return x

    return f


def convert_float(net: d.DlibNet) -> bytes:
    fwd = make_forward(net)

    @tf.function(input_signature=[tf.TensorSpec([1, 150, 150, 3], tf.uint8, name="chip_rgb")])
    def model(chip: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": fwd(tf.cast(chip, tf.float32))}

    cf = model.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], model)
    out: bytes = conv.convert()
    return out


def convert_int8(
    net: d.DlibNet,
    representative: Iterable[np.ndarray],
    *,
    mode: str = "int8",
    float_fallback: bool = False,
) -> bytes:
    """Full-integer int8 (or 16x8) with uint8 input (scale 1, zp 0) and float32 output."""
    fwd = make_forward(net)

    @tf.function(input_signature=[tf.TensorSpec([1, 150, 150, 3], tf.float32, name="chip_rgb")])
    def model(chip: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": fwd(chip)}

    samples = [np.asarray(s, np.float32).reshape(1, 150, 150, 3) for s in representative]
    # Pin the input range to exactly [0, 255] so that uint8 pixels are the quantised
    # input (scale 1, zero point 0): one corner pixel of the first sample is 0 and
    # one is 255. This touches 2 of ~30 million calibration pixels.
    samples[0] = samples[0].copy()
    samples[0][0, 0, 0, :] = 0.0
    samples[0][0, 0, 1, :] = 255.0

    def rep() -> Any:
        for s in samples:
            yield [s]

    cf = model.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    if mode == "int8":
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
    elif mode == "16x8":
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = tf.int16
    else:
        raise ValueError(mode)
    if float_fallback:
        ops = [*ops, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.target_spec.supported_ops = ops
    conv.inference_output_type = tf.float32
    out: bytes = conv.convert()
    return out
