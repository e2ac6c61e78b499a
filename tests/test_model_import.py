"""`edge models import`: a third-party TFLite embedder into a local models directory.

Uses the repository's own real models as the "third-party" files (no network,
no TensorFlow). Every test
works on a copy of models/ in tmp_path: the repo's manifest is never touched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError, UsageError
from edge.vision.embed import Embedder
from edge.vision.manifest import Manifest
from edge.vision.model_import import import_model, parse_normalisation
from tests.fixtures.data import MODELS

DLIB_FLOAT = MODELS / "dlib_resnet_v1_float32.tflite"
DETECTOR = MODELS / "blazeface_short_float32.tflite"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_models(dst: Path) -> Path:
    """models/ as symlinks to the real files plus a private copy of manifest.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in MODELS.glob("*.tflite"):
        (dst / f.name).symlink_to(f)
    (dst / "manifest.json").write_bytes((MODELS / "manifest.json").read_bytes())
    return dst


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    if not DLIB_FLOAT.is_file():
        pytest.skip("models/*.tflite are not built")
    return copy_models(tmp_path / "models")


@pytest.fixture(autouse=True)
def _repo_manifest_unchanged():
    before = _digest(MODELS / "manifest.json")
    yield
    assert _digest(MODELS / "manifest.json") == before


def _state(d: Path) -> tuple[str, list[str]]:
    return _digest(d / "manifest.json"), sorted(p.name for p in d.iterdir())


def test_import_adds_file_and_entry_and_embeds_like_the_original(
    models_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "ThirdParty-Net.tflite"
    src.write_bytes(DLIB_FLOAT.read_bytes())
    result = import_model(src, family="dlib150", licence="CC0-1.0 (test)", models_dir=models_dir)
    assert result.names == ["thirdparty_net_float32"]
    assert result.family == "dlib150" and not result.family_added
    m = Manifest.load(models_dir)
    e = m.entry("thirdparty_net_float32")
    assert e.role == "embedder" and e.family == "dlib150" and e.precision == "float32"
    assert e.sha256 == _digest(DLIB_FLOAT) and e.bytes == DLIB_FLOAT.stat().st_size
    assert e.licence == "CC0-1.0 (test)"
    assert e.source is not None and e.source.file == src.name
    assert e.input is not None and e.input.shape == [1, 150, 150, 3]
    assert m.verify("thirdparty_net_float32") == models_dir / "thirdparty_net_float32.tflite"
    # the existing entries are kept as they were
    repo = json.loads((MODELS / "manifest.json").read_text())
    new = json.loads((models_dir / "manifest.json").read_text())
    for name, entry in repo["models"].items():
        assert new["models"][name] == entry
    # the imported copy embeds exactly as the original
    chips = np.random.default_rng(3).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    a = Embedder.from_manifest(m, "thirdparty_net_float32", threads=1).embed(list(chips))
    b = Embedder.from_manifest(m, "dlib_resnet_v1_float32", threads=1).embed(list(chips))
    np.testing.assert_array_equal(a, b)


def test_cli_import_list_verify(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models", "import", str(DLIB_FLOAT), "--family", "dlib150", "--name", "mine",
               "--licence", "CC0-1.0", "--models-dir", str(models_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and "imported mine_float32" in out
    assert main(["models", "list", "--models-dir", str(models_dir)]) == 0
    assert "mine_float32" in capsys.readouterr().out
    assert main(["models", "verify", "--models-dir", str(models_dir)]) == 0
    # a corrupted import is caught by verify, in one line
    (models_dir / "mine_float32.tflite").write_bytes(b"\0" * DLIB_FLOAT.stat().st_size)
    assert main(["models", "verify", "--models-dir", str(models_dir)]) == 3
    err = capsys.readouterr().err.strip()
    assert "mine_float32.tflite" in err and "sha256" in err and "\n" not in err


def test_licence_is_required(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _state(models_dir)
    with pytest.raises(SystemExit) as exc:
        main(["models", "import", str(DLIB_FLOAT), "--family", "dlib150",
              "--models-dir", str(models_dir)])
    assert exc.value.code == 2 and "--licence" in capsys.readouterr().err
    rc = main(["models", "import", str(DLIB_FLOAT), "--family", "dlib150", "--licence", "  ",
               "--models-dir", str(models_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "licence" in err and "\n" not in err
    assert _state(models_dir) == before


@pytest.mark.parametrize(
    ("src", "family", "exc", "words"),
    [
        (DLIB_FLOAT, "arcface112", ModelError, ("150x150", "112x112")),
        (DLIB_FLOAT, "nosuchfamily", UsageError, ("unknown embedder family", "arcface112")),
        (DETECTOR, "dlib150", ModelError, ("outputs",)),
    ],
)
def test_refusals_change_nothing(
    models_dir: Path, src: Path, family: str, exc: type[Exception], words: tuple[str, ...]
) -> None:
    before = _state(models_dir)
    with pytest.raises(exc) as info:
        import_model(src, family=family, licence="x", models_dir=models_dir)
    line = str(info.value)
    assert "\n" not in line and all(w in line for w in words), line
    assert _state(models_dir) == before


def test_not_a_model_and_duplicate_name(models_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="not a usable TFLite model"):
        import_model(junk, family="dlib150", licence="x", models_dir=models_dir)
    import_model(DLIB_FLOAT, family="dlib150", licence="x", name="twice", models_dir=models_dir)
    before = _state(models_dir)
    with pytest.raises(UsageError, match="twice_float32 is already in"):
        import_model(DLIB_FLOAT, family="dlib150", licence="x", name="twice",
                     models_dir=models_dir)
    with pytest.raises(UsageError, match="--name"):
        import_model(DLIB_FLOAT, family="dlib150", licence="x", name="Bad Name",
                     models_dir=models_dir)
    assert _state(models_dir) == before


def test_changed_family_values_make_a_derived_family(models_dir: Path) -> None:
    r = import_model(DLIB_FLOAT, family="dlib150", licence="x", name="strict",
                     models_dir=models_dir, threshold=0.5)
    assert r.family == "dlib150_strict" and r.family_added
    m = Manifest.load(models_dir)
    assert m.entry("strict_float32").family == "dlib150_strict"
    assert m.family("dlib150_strict").threshold == 0.5
    assert m.family("dlib150").threshold == 0.6  # the original family is untouched
    emb = Embedder.from_manifest(m, "strict_float32", threads=1)
    assert emb.family.name == "dlib150_strict" and emb.family.dim == 128


def test_parse_normalisation() -> None:
    assert parse_normalisation("127.5,128") == ((127.5,) * 3, (128.0,) * 3)
    assert parse_normalisation("1,2,3,4,5,6") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert parse_normalisation(None) is None
    for bad in ("1", "a,b", "1,0", "1,2,3"):
        with pytest.raises(UsageError):
            parse_normalisation(bad)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="TensorFlow is installed here: the no-build-extra message cannot be shown",
)
def test_quantise_without_tensorflow_is_one_clear_line(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(models_dir)
    rc = main(["models", "import", str(DLIB_FLOAT), "--family", "dlib150", "--licence", "x",
               "--models-dir", str(models_dir), "--quantise", "--calibration", str(models_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert err.startswith("edge: int8 quantisation needs the build extra") and "\n" not in err
    assert _state(models_dir) == before
