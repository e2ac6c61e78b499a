"""Several gallery images per subject in ``edge eval identify``: ``--gallery-images K`` (the
same probes for every K) and ``--reference fused|best`` (scored as the device scores a
subject with several references), checked against a computation from the embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError, UsageError
from edge.evaluation.identify import (
    ScoreSet,
    lfw_sets,
    limit_gallery,
    parse_gallery_images,
    parse_references,
)
from edge.recognition.match import Matcher, Watchlist
from tests.test_identify_probes import _tree  # one LFW-style tree maker for both


def _gallery(sets) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {k: [p.name for p in v] for k, v in sets.gallery.items()}


def test_gallery_images_keep_the_same_probes_for_every_k(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lfw", {"A": 6, "B": 1, "C": 3, "D": 2})
    three = lfw_sets(root, gallery_images=3)
    assert _gallery(three) == {"A": ["A_0001.png", "A_0002.png", "A_0003.png"],
                               "C": ["C_0001.png", "C_0002.png"], "D": ["D_0001.png"]}
    probes = sorted(p.path.name for p in three.probes)
    assert probes == ["A_0004.png", "A_0005.png", "A_0006.png", "B_0001.png", "C_0003.png",
                      "D_0002.png"]
    one = limit_gallery(three, 1)
    assert _gallery(one) == {"A": ["A_0001.png"], "C": ["C_0001.png"], "D": ["D_0001.png"]}
    assert one.probes == three.probes  # the same searches, a smaller gallery
    two = limit_gallery(three, 2)
    assert _gallery(two)["A"] == ["A_0001.png", "A_0002.png"] and two.probes == three.probes
    assert "2 subjects with more than one" in two.protocol
    assert limit_gallery(three, 3).gallery == three.gallery
    # one gallery image is the LFW protocol as before
    assert _gallery(lfw_sets(root)) == {"A": ["A_0001.png"], "C": ["C_0001.png"],
                                        "D": ["D_0001.png"]}
    with pytest.raises(UsageError, match="--gallery-images"):
        lfw_sets(root, gallery_images=0)


def test_parse_gallery_images_and_references() -> None:
    assert parse_gallery_images("1,2,3") == [1, 2, 3]
    for bad in ("x", "0", "17", "2,2", ""):
        with pytest.raises(UsageError, match="--gallery-images"):
            parse_gallery_images(bad)
    assert parse_references("fused,best") == ["fused", "best"]
    for bad in ("mean", "best,best", ""):
        with pytest.raises(UsageError, match="--reference"):
            parse_references(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "identify", "--lfw", "{t}/g", "--gallery-images", "0"], "each K must be"),
        (["eval", "identify", "--lfw", "{t}/g", "--reference", "mean"], "--reference"),
        (["eval", "identify", "--lfw", "{t}/g", "--gallery-images", "1,2", "--save-scores",
          "{t}/x.npz"], "--save-scores takes one"),
        (["eval", "calibrate", "--lfw", "{t}/g", "--reference", "fused,best",
          "--watchlist-size", "5"], "calibrate takes one mode"),
        (["eval", "calibrate", "--lfw", "{t}/g", "--gallery-images", "1,3",
          "--watchlist-size", "5"], "calibrate takes one K"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], message: str) -> None:
    _tree(tmp_path / "g", {"A": 3, "B": 3, "C": 1})
    code = main([a.format(t=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edge: ") and message in err


@pytest.mark.lfw
def test_lfw_fused_and_best_references_equal_the_device_matcher(
    lfw_dir: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 identities with 4+ images: 3 gallery images each, the rest probes, and 4
    single-image identities as non-mated. Each saved score set is recomputed from the
    images' embeddings with the daemon's Watchlist and Matcher."""
    from edge.evaluation.identify import embed_images
    from edge.vision.faces import FaceEngine

    try:
        engine = FaceEngine.from_models(models_dir, threads=1)
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")
    multi = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) >= 5)[:4]
    single = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) == 1)[:4]
    root = tmp_path / "lfw"
    for d in [*multi, *single]:
        (root / d.name).mkdir(parents=True)
        for img in sorted(d.glob("*.jpg"))[:5]:
            (root / d.name / img.name).symlink_to(img)
    code = main(["eval", "identify", "--lfw", str(root), "--gallery-images", "1,3",
                 "--reference", "fused,best", "--fpir", "0.25", "--threads", "1", "--json",
                 "--no-progress", "--no-fallback"])
    out, _ = capsys.readouterr()
    assert code == 0
    reps = json.loads(out)
    assert [(r["gallery_images"], r["reference"]) for r in reps] == [
        (1, "fused"), (1, "best"), (3, "fused"), (3, "best")]
    assert {r["counts"]["mated_probes"] for r in reps} == {8}  # 2 probes each, every K
    assert {r["images_embedded"] for r in reps} == {24}  # each image once
    assert reps[0]["operating_points"] == reps[1]["operating_points"]  # one image: alike
    saved: dict[str, ScoreSet] = {}
    for ref in ("fused", "best"):
        npz = tmp_path / f"{ref}.npz"
        assert main(["eval", "identify", "--lfw", str(root), "--gallery-images", "3",
                     "--reference", ref, "--threads", "1", "--no-progress", "--no-fallback",
                     "--save-scores", str(npz)]) == 0
        saved[ref] = ScoreSet.load(npz)
        assert saved[ref].info["reference"] == ref and saved[ref].info["gallery_images"] == "3"
    capsys.readouterr()
    names = [d.name for d in multi]
    gallery = [p for n in names for p in sorted((root / n).iterdir())[:3]]
    probes = [p for d in sorted(root.iterdir()) for p in sorted(d.iterdir())
              if p not in gallery]  # in the score set's order: identities sorted
    emb, ok = embed_images(engine, [*gallery, *probes], progress=False)
    assert ok.all()
    for ref, ss in saved.items():
        assert ss.gallery_ids == tuple(names)
        wl = Watchlist(list(names), ["suspect"] * 4, emb[:12].copy(), engine.family.metric,
                       0.5, "", reference_counts=[3, 3, 3, 3], reference=ref)  # type: ignore[arg-type]
        matches = Matcher(wl).best(emb[12:])
        assert [m.subject_index for m in matches] == ss.scores.argmax(axis=1).tolist()
        assert [m.score for m in matches] == pytest.approx(ss.scores.max(axis=1).tolist(),
                                                           abs=1e-4)
    assert not np.allclose(saved["fused"].scores, saved["best"].scores)
    # calibrate reads the mode's own score set: the threshold for the mode the bundle names
    for ref in ("fused", "best"):
        assert main(["eval", "calibrate", "--scores", str(tmp_path / f"{ref}.npz"),
                     "--watchlist-size", "2", "--fpir", "0.25", "--json"]) == 0
        cal = json.loads(capsys.readouterr().out)
        assert cal["label"].endswith(f"3 gallery images, {ref}")
        assert np.isfinite(cal["calibrations"][0]["threshold"])
