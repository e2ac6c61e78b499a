"""Multi-image probes of ``edge eval identify --probe-images K``: grouping, LFW hold-out,
the fused probe template, the CLI (errors and an LFW run with the real models)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError, UsageError
from edge.evaluation.identify import (
    SearchSet,
    group_probes,
    lfw_sets,
    parse_probe_images,
    probe_templates,
    ungroup,
)
from edge.vision.fusion import fuse


def _tree(root: Path, spec: dict[str, int]) -> Path:
    for name, n in spec.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{name}_{i + 1:04d}.png"),
                        np.full((8, 8, 3), 40 * i, np.uint8))
    return root


def _names(sets: SearchSet) -> list[tuple[str, list[str]]]:
    return sorted((p.identity, [x.name for x in p.paths]) for p in sets.probes)


def test_group_probes_disjoint_groups_of_k(tmp_path: Path) -> None:
    s = lfw_sets(_tree(tmp_path / "lfw", {"A": 6, "B": 1, "C": 3, "D": 2}))
    assert group_probes(s, 1) is s
    g2 = group_probes(s, 2)
    assert _names(g2) == [
        ("A", ["A_0002.png", "A_0003.png"]), ("A", ["A_0004.png", "A_0005.png"]),
        ("C", ["C_0002.png", "C_0003.png"]),
    ]  # A_0006 does not fill a group; D has one probe image; B is single
    assert g2.gallery == s.gallery and g2.probe_images == 2
    assert (g2.mated, g2.non_mated) == (3, 0)
    flat = ungroup(g2)  # the same images, one probe each
    assert sorted((p.identity, p.path.name) for p in flat.probes) == sorted(
        (n, x) for n, xs in _names(g2) for x in xs)
    assert flat.probe_images == 1 and flat.gallery == s.gallery
    g3 = group_probes(s, 3)
    assert _names(g3) == [("A", ["A_0002.png", "A_0003.png", "A_0004.png"])]
    with pytest.raises(UsageError, match="no mated identity has 9 probe images"):
        group_probes(s, 9)
    with pytest.raises(UsageError, match="must be >= 1"):
        group_probes(s, 0)


def test_lfw_holdout_gives_multi_image_non_mated(tmp_path: Path) -> None:
    root = _tree(tmp_path / "lfw", {f"P{i:02d}": 2 + i % 3 for i in range(20)} | {"S": 1})
    plain = lfw_sets(root)
    assert len(plain.gallery) == 20 and plain.non_mated == 1
    held = lfw_sets(root, 0.5)
    assert held == lfw_sets(root, 0.5)  # the same identities every time (and for every K)
    out = set(plain.gallery) - set(held.gallery)
    assert len(out) == 10 and "held out" in held.protocol
    for name in out:  # all of a held-out identity's images are non-mated probes
        assert sorted(p.path.name for p in held.probes if p.identity == name) == sorted(
            f.name for f in (root / name).iterdir())
    g2 = group_probes(held, 2)
    assert g2.non_mated == sum(len(list((root / n).iterdir())) // 2 for n in out)
    assert all(len(p.paths) == 2 for p in g2.probes)
    with pytest.raises(UsageError, match="--holdout"):
        lfw_sets(root, 1.0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_probe_template_is_the_fusion_of_images_with_a_face(metric: str) -> None:
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(5, 8)).astype(np.float32)
    ok = np.array([True, True, False, True, False])
    tpl, has = probe_templates(emb, ok, [[0], [0, 1], [1, 2], [2, 4], [0, 1, 3]], metric)  # type: ignore[arg-type]
    assert has.tolist() == [True, True, True, False, True]
    assert np.array_equal(tpl[0], emb[0])  # one image: its embedding as it is
    assert np.allclose(tpl[1], fuse(emb[[0, 1]], metric))  # type: ignore[arg-type]
    assert np.array_equal(tpl[2], emb[1])  # the faceless image is left out
    assert not tpl[3].any()
    assert np.allclose(tpl[4], fuse(emb[[0, 1, 3]], metric))  # type: ignore[arg-type]
    assert not np.allclose(tpl[4], tpl[1])


def test_parse_probe_images() -> None:
    assert parse_probe_images("1,2,3") == [1, 2, 3]
    for bad in ("x", "0", "2,2", ""):
        with pytest.raises(UsageError, match="--probe-images"):
            parse_probe_images(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "identify", "--lfw", "{t}/g", "--probe-images", "0"], "each K must be"),
        (["eval", "identify", "--lfw", "{t}/g", "--probe-images", "5"],
         "no mated identity has 5 probe images"),
        (["eval", "identify", "--lfw", "{t}/g", "--probe-images", "1,2", "--save-scores",
          "{t}/x.npz"], "--save-scores takes one"),
        (["eval", "calibrate", "--lfw", "{t}/g", "--probe-images", "1,2", "--watchlist-size",
          "5"], "calibrate takes one K"),
        (["eval", "identify", "--lfw", "{t}/g", "--holdout", "1.5"], "--holdout"),
        (["eval", "identify", "--gallery", "{t}/g", "--probes", "{t}/g", "--holdout", "0.5"],
         "--holdout is for --lfw"),
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
def test_lfw_fused_probes_end_to_end(
    lfw_dir: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """6 gallery subjects; 2-image probes of them and of 6 identities not in the gallery."""
    from edge.vision.faces import FaceEngine

    try:
        FaceEngine.from_models(models_dir, threads=1)
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")
    multi = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) >= 3)[:12]
    for k, d in enumerate(multi):
        imgs = sorted(d.glob("*.jpg"))
        if k < 6:
            (tmp_path / "g" / d.name).mkdir(parents=True)
            (tmp_path / "g" / d.name / imgs[0].name).symlink_to(imgs[0])
        (tmp_path / "p" / d.name).mkdir(parents=True)
        for img in imgs[1:3]:
            (tmp_path / "p" / d.name / img.name).symlink_to(img)
    code = main(["eval", "identify", "--gallery", str(tmp_path / "g"), "--probes",
                 str(tmp_path / "p"), "--probe-images", "1,2", "--fpir", "0.2", "--threads",
                 "1", "--json", "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0
    one, two = json.loads(out)
    assert (one["probe_images"], two["probe_images"]) == (1, 2)
    assert one["counts"]["mated_probes"] == 12 and one["counts"]["non_mated_probes"] == 12
    assert two["counts"]["mated_probes"] == 6 and two["counts"]["non_mated_probes"] == 6
    assert one["images_embedded"] == two["images_embedded"] == 30  # each image once
    assert two["rank1"] >= 5 / 6
    assert "2 images fused per probe" in two["protocol"]
    base = two["same_images_one_by_one"]  # the fused probes' own images, one by one
    assert base["counts"]["mated_probes"] == 12 and base["counts"]["non_mated_probes"] == 12
    assert "same_images_one_by_one" not in one
    code = main(["eval", "identify", "--gallery", str(tmp_path / "g"), "--probes",
                 str(tmp_path / "p"), "--probe-images", "2", "--fpir", "0.2", "--threads",
                 "1", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "of 2 images each (fused)" in text and "one by one" in text
