"""Open-set 1:N metrics and calibration on hand-made score matrices; CLI errors; a small LFW run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import ModelError, UsageError
from edge.evaluation.calibrate import calibrate, fmr_at, impostor_scores, model_fpir
from edge.evaluation.identify import (
    ScoreSet,
    det_curve,
    folder_sets,
    lfw_sets,
    mated_rank1,
    nonmated_top,
    operating_points,
    point_at,
    rank1_rate,
    report,
    subject_scores,
    threshold_for_fpir,
)

NEG = -np.inf


def tiny() -> ScoreSet:
    """3 subjects; 4 mated probes (one without a face), 4 non-mated (one without a face)."""
    scores = np.array(
        [
            [0.9, 0.2, 0.1],  # mate 0, rank 1 at 0.9
            [0.3, 0.6, 0.5],  # mate 1, rank 1 at 0.6
            [0.7, 0.1, 0.4],  # mate 2, but subject 0 is on top (0.7)
            [NEG, NEG, NEG],  # mate 0, no face
            [0.5, 0.2, 0.1],  # non-mated, top 0.5
            [0.1, 0.35, 0.3],  # non-mated, top 0.35
            [0.2, 0.1, 0.05],  # non-mated, top 0.2
            [NEG, NEG, NEG],  # non-mated, no face
        ],
        dtype=np.float32,
    )
    mate = np.array([0, 1, 2, 0, -1, -1, -1, -1], dtype=np.int64)
    return ScoreSet(scores, mate, ("a", "b", "c"), label="tiny", metric="cosine",
                    probe_failures=2, gallery_images=3)


def f32(x: float) -> float:
    return float(np.float32(x))


def test_rank1_and_tops() -> None:
    ss = tiny()
    assert rank1_rate(ss) == 0.5
    assert list(nonmated_top(ss)) == [f32(0.5), f32(0.35), f32(0.2), NEG]
    assert list(mated_rank1(ss)) == [f32(0.9), f32(0.6), NEG, NEG]
    assert (ss.n_mated, ss.n_non_mated) == (4, 4)


def test_thresholds_for_fpir() -> None:
    nm = nonmated_top(tiny())
    # 1 of 4 allowed: just above the second-highest non-mated score.
    assert threshold_for_fpir(nm, 0.25) == np.nextafter(f32(0.35), np.inf)
    # none allowed: just above the highest
    assert threshold_for_fpir(nm, 0.1) == np.nextafter(f32(0.5), np.inf)
    assert threshold_for_fpir(nm, 0.5) == np.nextafter(f32(0.2), np.inf)
    # more allowed than there are templates: the lowest score lets all through
    assert threshold_for_fpir(nm, 0.75) == f32(0.2)


def test_operating_points_plain_numbers() -> None:
    ss = tiny()
    p25, p10 = operating_points(ss, [0.25, 0.1])
    assert p25.fpir == 0.25 and p25.false_positives == 1
    assert p25.tpir == 0.5 and p25.fnir == 0.5
    assert p25.mated_wrong_subject == 0.25  # probe 2's wrong top 0.7 passes
    assert not p25.below_resolution
    assert p10.fpir == 0.0 and p10.tpir == 0.5
    assert p10.below_resolution  # 0.1 * 4 searches < 1
    p = point_at(ss, f32(0.7))
    assert (p.fpir, p.tpir, p.fnir, p.mated_wrong_subject) == (0.0, 0.25, 0.75, 0.25)


def test_det_curve_plain_numbers() -> None:
    c = det_curve(tiny(), [0.25])
    assert list(c.thresholds) == [f32(v) for v in (0.2, 0.35, 0.5, 0.6, 0.9)]
    assert list(c.fpir) == [0.75, 0.5, 0.25, 0.0, 0.0]
    assert list(c.fnir) == [0.5, 0.5, 0.5, 0.5, 0.75]
    assert len(c.points) == 1
    # FNIR never falls as the threshold rises; FPIR never rises.
    assert np.all(np.diff(c.fnir) >= 0) and np.all(np.diff(c.fpir) <= 0)


def test_report_counts() -> None:
    rep = report(tiny(), [0.25], family_threshold=f32(0.7))
    assert rep["counts"] == {
        "gallery_subjects": 3, "gallery_images": 3, "gallery_without_template": 0,
        "mated_probes": 4, "non_mated_probes": 4, "probes_without_face": 2,
    }
    assert rep["rank1"] == 0.5
    assert rep["fpir_resolution"] == 0.25
    assert rep["operating_points"][0]["tpir"] == 0.5
    assert rep["at_family_threshold"]["tpir"] == 0.25
    json.dumps(rep)


def test_subject_scores_take_best_template() -> None:
    t = np.array([[0.1, 0.5, 0.3], [0.4, 0.2, 0.9]], dtype=np.float32)
    s = subject_scores(t, np.array([0, 1, 0], dtype=np.int64), 3)
    assert s[:, 0].tolist() == [f32(0.3), f32(0.9)]
    assert s[:, 1].tolist() == [f32(0.5), f32(0.2)]
    assert np.all(np.isneginf(s[:, 2]))  # a subject without a template is never found


def test_scoreset_validation_and_round_trip(tmp_path: Path) -> None:
    ss = tiny()
    p = tmp_path / "s.npz"
    ss.save(p)
    back = ScoreSet.load(p)
    assert np.array_equal(back.scores, ss.scores) and np.array_equal(back.mate, ss.mate)
    assert back.gallery_ids == ss.gallery_ids and back.label == "tiny"
    assert back.probe_failures == 2
    with pytest.raises(ValueError):
        ScoreSet(ss.scores, np.array([5] * 8, dtype=np.int64), ss.gallery_ids)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a saved score set"):
        ScoreSet.load(tmp_path / "junk.npz")
    with pytest.raises(UsageError, match="does not exist"):
        ScoreSet.load(tmp_path / "absent.npz")


def test_calibration_plain_numbers() -> None:
    ss = tiny()
    imp = impostor_scores(ss)
    assert imp.size == 15  # 3 mated probes x 2 non-mates + 3 non-mated x 3 (no-face rows out)
    assert fmr_at(imp, f32(0.5)) == pytest.approx(3 / 15)  # 0.5, 0.5 and 0.7
    assert model_fpir(0.001, 10) == pytest.approx(1 - 0.999**10)
    assert model_fpir(0.0, 10) == 0.0
    assert model_fpir(1.0, 3) == 1.0


def _uniform_set(seed: int = 1, g: int = 200, nm: int = 2000, m: int = 300) -> ScoreSet:
    """Impostor scores ~ U(0, 1) i.i.d.; mates score 0.9999 (so FPIR_N(T) = 1 - T^N)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((nm + m, g)).astype(np.float32)
    mate = np.full(nm + m, -1, dtype=np.int64)
    mate[nm:] = rng.integers(0, g, m)
    scores[np.arange(nm, nm + m), mate[nm:]] = 0.9999
    return ScoreSet(scores, mate, tuple(f"s{i}" for i in range(g)))


def test_calibrate_subsample_matches_theory() -> None:
    ss = _uniform_set()
    c = calibrate(ss, 0.01, 10, reps=20)
    assert c.method == "subsample"
    theory = 0.99 ** (1 / 10)  # 1 - T^10 = 0.01
    assert c.threshold == pytest.approx(theory, abs=5e-4)
    assert c.expected_fpir <= 0.01
    assert c.false_alerts_per_10k == pytest.approx(c.expected_fpir * 10_000)
    # the independence model agrees here, because the scores are independent
    assert c.model_fpir == pytest.approx(0.01, rel=0.3)
    assert c.tpir > 0.9


def test_calibrate_extrapolates_beyond_the_gallery() -> None:
    ss = _uniform_set()
    c = calibrate(ss, 0.01, 1000)
    assert c.method == "extrapolated"
    assert any("exceeds the measured gallery" in n for n in c.notes)
    assert c.threshold == pytest.approx(0.99 ** (1 / 1000), abs=2e-5)
    assert c.model_fpir == pytest.approx(0.01, rel=0.5)
    assert c.subsample_fpir is None
    # A longer list needs a stricter threshold for the same FPIR.
    assert c.threshold > calibrate(ss, 0.01, 10).threshold


def test_calibrate_rejects_bad_input() -> None:
    with pytest.raises(UsageError):
        calibrate(tiny(), 0.0, 10)
    with pytest.raises(UsageError):
        calibrate(tiny(), 0.01, 0)


def _tree(root: Path, spec: dict[str, int], src: Path | None = None) -> Path:
    """Identity folders with ``n`` tiny PNGs each (or symlinks to ``src`` images)."""
    import cv2

    for name, n in spec.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{name}_{i + 1:04d}.png"),
                        np.full((8, 8, 3), 40 * i, np.uint8))
    return root


def test_lfw_and_folder_protocols(tmp_path: Path) -> None:
    lfw = _tree(tmp_path / "lfw", {"A": 3, "B": 1, "C": 2})
    s = lfw_sets(lfw)
    assert {k: [p.name for p in v] for k, v in s.gallery.items()} == {
        "A": ["A_0001.png"], "C": ["C_0001.png"],
    }
    assert sorted(p.path.name for p in s.probes) == [
        "A_0002.png", "A_0003.png", "B_0001.png", "C_0002.png",
    ]
    assert (s.mated, s.non_mated) == (3, 1)
    g = _tree(tmp_path / "g", {"A": 2})
    pr = _tree(tmp_path / "p", {"A": 1, "Z": 2})
    f = folder_sets(g, pr)
    assert len(f.gallery["A"]) == 2 and (f.mated, f.non_mated) == (1, 2)
    with pytest.raises(UsageError, match="no identity has two images"):
        lfw_sets(_tree(tmp_path / "single", {"A": 1, "B": 1}))
    with pytest.raises(UsageError, match="not a folder"):
        folder_sets(tmp_path / "absent", pr)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "identify"], "--lfw DIR, or --gallery DIR --probes DIR"),
        (["eval", "identify", "--gallery", "{t}/g"], "--lfw DIR, or --gallery"),
        (["eval", "identify", "--gallery", "{t}/g", "--probes", "{t}/nope"], "not a folder"),
        (["eval", "identify", "--lfw", "{t}/g", "--fpir", "2"], "between 0 and 1"),
        (["eval", "identify", "--lfw", "{t}/g", "--fpir", "x"], "expected numbers"),
        (["eval", "identify", "--gallery", "{t}/g", "--probes", "{t}/bad"],
         "cannot be read as an image"),
        (["eval", "identify", "--lfw", "{t}/g", "--plot-scores", "{t}/s.npz"],
         "--plot-scores needs --plot"),
        (["eval", "calibrate", "--scores", "{t}/absent.npz", "--watchlist-size", "5"],
         "does not exist"),
        (["eval", "calibrate", "--scores", "{t}/s.npz", "--watchlist-size", "x"],
         "--watchlist-size"),
        (["eval", "calibrate", "--watchlist-size", "5"], "--lfw DIR, or --gallery"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    _tree(tmp_path / "g", {"A": 2, "B": 2})
    bad = tmp_path / "bad" / "X"
    bad.mkdir(parents=True)
    (bad / "X_0001.jpg").write_text("not a picture")
    tiny().save(tmp_path / "s.npz")
    code, out, err = run_cli([a.format(t=tmp_path) for a in argv], capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("edge: ") and message in err


def test_cli_calibrate_from_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "u.npz"
    _uniform_set().save(p)
    code, out, _ = run_cli(
        ["eval", "calibrate", "--scores", str(p), "--fpir", "0.01",
         "--watchlist-size", "10,1000", "--json"], capsys,
    )
    assert code == 0
    data = json.loads(out)
    a, b = data["calibrations"]
    assert (a["method"], b["method"]) == ("subsample", "extrapolated")
    assert a["threshold"] < b["threshold"]
    assert math.isclose(
        a["expected_false_alerts_per_10k_faces"], a["expected_fpir"] * 10_000, rel_tol=1e-3
    )


def test_cli_identify_from_saved_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    tiny().save(tmp_path / "s.npz")
    _uniform_set().save(tmp_path / "u.npz")
    code, out, _ = run_cli(
        ["eval", "identify", "--scores", str(tmp_path / "s.npz"), "--fpir", "0.25,0.1",
         "--json", "--plot", str(tmp_path / "det.png"), "--plot-scores", str(tmp_path / "u.npz")],
        capsys,
    )
    assert code == 0
    rep = json.loads(out)
    assert rep["rank1"] == 0.5
    assert [p["tpir"] for p in rep["operating_points"]] == [0.5, 0.5]
    assert (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"
    # a closed-set miss everywhere is a rank-1 of 0, not "unknown"
    zero = ScoreSet(np.array([[0.1, 0.9]], np.float32), np.array([0], np.int64), ("a", "b"))
    rz = report(zero, [0.5])
    assert rz["rank1"] == 0.0
    assert rz["operating_points"] == [] and "no non-mated probes" in rz["note"]
    with pytest.raises(UsageError, match="needs both mated and non-mated"):
        det_curve(zero)


def test_det_plot_several_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edge.evaluation.det_plot import plot_det

    out = plot_det(
        [det_curve(tiny(), [0.25]), det_curve(_uniform_set(), [0.01])], tmp_path / "det.png"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def engine_or_skip(models_dir: Path) -> None:
    from edge.vision.faces import FaceEngine

    try:
        FaceEngine.from_models(models_dir, threads=1)
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")


@pytest.mark.lfw
def test_small_lfw_identify(
    lfw_dir: Path, engine_or_skip: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """12 gallery subjects, 12 mated and 12 non-mated probes from LFW, end to end."""
    multi = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) >= 2)[:12]
    single = sorted(d for d in lfw_dir.iterdir() if len(list(d.glob("*.jpg"))) == 1)[:12]
    for d in multi:
        imgs = sorted(d.glob("*.jpg"))
        (tmp_path / "g" / d.name).mkdir(parents=True)
        (tmp_path / "g" / d.name / imgs[0].name).symlink_to(imgs[0])
        (tmp_path / "p" / d.name).mkdir(parents=True)
        (tmp_path / "p" / d.name / imgs[1].name).symlink_to(imgs[1])
    for d in single:
        img = next(d.glob("*.jpg"))
        (tmp_path / "p" / d.name).mkdir(parents=True)
        (tmp_path / "p" / d.name / img.name).symlink_to(img)
    code, out, _ = run_cli(
        ["eval", "identify", "--gallery", str(tmp_path / "g"), "--probes", str(tmp_path / "p"),
         "--threads", "1", "--json", "--no-progress", "--plot", str(tmp_path / "det.png"),
         "--save-scores", str(tmp_path / "s.npz")],
        capsys,
    )
    assert code == 0
    rep = json.loads(out)
    assert rep["counts"]["gallery_subjects"] == 12
    assert rep["counts"]["mated_probes"] == 12 and rep["counts"]["non_mated_probes"] == 12
    assert rep["rank1"] >= 0.75
    assert (tmp_path / "det.png").stat().st_size > 0
    ss = ScoreSet.load(tmp_path / "s.npz")
    assert ss.scores.shape == (24, 12)


def test_score_fusion_is_the_mean_of_two_embedders_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--scores A B`: one score set whose similarities are the mean of A's and B's; a
    probe that one embedder ranks wrongly can be put right by the other."""
    from edge.evaluation.identify_scores import fuse_score_sets

    mate = np.array([0, 1, -1], dtype=np.int64)
    a = ScoreSet(np.array([[0.9, 0.1], [0.6, 0.5], [0.3, 0.2]], np.float32), mate,
                 ("x", "y"), label="A", metric="cosine")
    b = ScoreSet(np.array([[0.7, 0.3], [0.1, 0.9], [0.2, 0.4]], np.float32), mate,
                 ("x", "y"), label="B", metric="cosine")
    fused = fuse_score_sets([a, b])
    np.testing.assert_allclose(fused.scores, [[0.8, 0.2], [0.35, 0.7], [0.25, 0.3]], atol=1e-6)
    assert fused.label == "A + B (mean)" and fused.metric == "fused-mean"
    assert report(a, [0.5])["rank1"] == 0.5 and report(fused, [0.5])["rank1"] == 1.0
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    code, out, _ = run_cli(["eval", "identify", "--scores", str(tmp_path / "a.npz"),
                            str(tmp_path / "b.npz"), "--fpir", "0.5", "--json"], capsys)
    assert code == 0 and json.loads(out)["rank1"] == 1.0
    # sets that do not search the same probes in the same gallery are refused
    other = ScoreSet(b.scores, np.array([1, 0, -1], np.int64), ("x", "y"))
    with pytest.raises(UsageError, match="same probes"):
        fuse_score_sets([a, other])
