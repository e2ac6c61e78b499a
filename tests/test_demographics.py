"""``edge eval demographics`` on synthetic score sets whose answer is known, its CLI, the
manifest record and the warning of ``edge watchlist build``; a small real LFW run with the
shared gender labels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import UsageError
from edge.evaluation.calibrate import calibrate
from edge.evaluation.demographics import load_labels, measure_all, population
from edge.evaluation.demographics_report import parse_sweep, report
from edge.evaluation.identify import ScoreSet
from edge.evaluation.intervals import betainc, clopper_pearson, identity_weights

Draw = Callable[[np.random.Generator, int], np.ndarray]


def uniform(lo: float = 0.0, hi: float = 1.0) -> Draw:
    return lambda rng, n: rng.uniform(lo, hi, n)


def stretched(ratio: float) -> Draw:
    """P(s >= t) = ratio * (1 - t) near the top: ``ratio`` times the FMR of U(0, 1)."""
    return lambda rng, n: 1.0 - (1.0 - rng.random(n)) / ratio


def mixture(p: float, a: Draw, b: Draw) -> Draw:
    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.where(rng.random(n) < p, b(rng, n), a(rng, n))
    return draw


def synth(
    groups: dict[str, tuple[int, int]],
    within: dict[str, Draw],
    *,
    across: Draw | None = None,
    misses: dict[str, float] | None = None,
    lamb: tuple[str, Draw] | None = None,
    unlabelled: int = 0,
    seed: int = 1,
) -> tuple[ScoreSet, dict[str, str]]:
    """Per group (mated identities, non-mated identities): a mated identity has a gallery
    image and two probes, a non-mated one a probe. Impostor scores are drawn per probe
    group x gallery group (``within`` for the same group, else ``across``, by default
    U(0, 0.9)); a mate scores
    1.0 (always rank 1), or 0.5 for the ``misses`` share of a group's mated probes.
    ``lamb`` (group, draw): that group's first mated identity scores ``draw`` against every
    subject of its group (one identity that resembles everyone)."""
    rng = np.random.default_rng(seed)
    labels: dict[str, str] = {}
    gallery: list[str] = []
    probes: list[str] = []
    for g, (mated, non) in groups.items():
        for i in range(mated):
            name = f"{g}{i:03d}"
            labels[name] = g
            gallery.append(name)
            probes += [name, name]
        for i in range(non):
            name = f"{g}n{i:03d}"
            labels[name] = g
            probes.append(name)
    for i in range(unlabelled):
        probes.append(f"nolabel{i}")
    group_of = {**labels, **{f"nolabel{i}": "X" for i in range(unlabelled)}}
    pg = np.array([group_of[p] for p in probes])
    sg = np.array([labels[s] for s in gallery])
    scores = np.zeros((len(probes), len(gallery)), dtype=np.float64)
    for a in set(pg):
        for b in set(sg):
            rows, cols = np.flatnonzero(pg == a), np.flatnonzero(sg == b)
            draw = within[a] if a == b else (across or uniform(0.0, 0.9))
            block = draw(rng, rows.size * cols.size).reshape(rows.size, cols.size)
            scores[np.ix_(rows, cols)] = block
    if lamb is not None:
        g, draw = lamb
        name = f"{g}000"
        rows = [i for i, p in enumerate(probes) if p == name]
        cols = np.flatnonzero(sg == g)
        scores[np.ix_(rows, cols)] = draw(rng, len(rows) * cols.size).reshape(len(rows), -1)
    index = {s: j for j, s in enumerate(gallery)}
    mate = np.array([index.get(p, -1) for p in probes], dtype=np.int64)
    for g in groups:
        rows = np.flatnonzero((mate >= 0) & (pg == g))
        miss = rng.random(rows.size) < (misses or {}).get(g, 0.0)
        scores[rows, mate[rows]] = np.where(miss, 0.5, 1.0)
    ss = ScoreSet(scores.astype(np.float32), mate, tuple(gallery), label="synthetic",
                  metric="cosine", probe_ids=tuple(probes))
    return ss, labels


def run(ss: ScoreSet, labels: dict[str, str], threshold: float,
        sweep: list[float] | None = None, reps: int = 400) -> dict:  # type: ignore[type-arg]
    pop = population(ss, labels)
    sw = sweep if sweep is not None else [threshold]
    meas = measure_all(pop, [*sw, threshold], reps=reps, seed=0)
    return report(meas, threshold, sw, min_identities=10, seed=0,
                  operating={"source": "given"}, labels_file="synthetic")


GROUPS = {"A": (100, 50), "B": (100, 50)}


def test_two_groups_whose_fmr_differs_threefold() -> None:
    ss, labels = synth(GROUPS, {"A": uniform(), "B": stretched(3.0)})
    rep = run(ss, labels, 0.99)
    a, b = rep["groups"]["A"]["fmr"], rep["groups"]["B"]["fmr"]
    assert a["rate"] == pytest.approx(0.01, rel=0.25) and b["rate"] == pytest.approx(0.03, rel=0.2)
    assert a["n"] == 250 * 100 - 200  # every probe x every other subject of the group
    assert a["interval"][0] < a["rate"] < a["interval"][1]
    assert a["interval_method"] == "bootstrap"
    r = rep["ratios"]["fmr"]
    assert (r["max_group"], r["min_group"]) == ("B", "A")
    assert r["ratio"] == pytest.approx(3.0, rel=0.2)
    assert r["interval"][0] > 1.5 and r["interval"][1] < 5.0
    assert r["significant"] is True
    # across groups nothing reaches 0.99 (drawn below 0.9): zero counts with an upper bound
    cross = rep["fmr_matrix"]["cells"]["A"]["B"]
    assert cross["count"] == 0 and cross["interval"][0] == 0.0
    assert cross["interval"][1] == pytest.approx(clopper_pearson(0, cross["n"])[1])
    assert "zero count" in cross["interval_method"]


def test_equal_groups_are_not_significant_and_the_interval_covers_one() -> None:
    ss, labels = synth(GROUPS, {"A": uniform(), "B": uniform()})
    rep = run(ss, labels, 0.99)
    r = rep["ratios"]["fmr"]
    assert r["ratio"] < 1.3
    assert r["interval"][0] < 1.0 < r["interval"][1]
    assert r["significant"] is False
    f = rep["ratios"]["fnir"]  # nobody is missed: no event in any group
    assert f["ratio"] is None and not f["significant"] and "no group has an event" in f["note"]


def test_one_identity_that_resembles_everyone_is_not_a_group_difference() -> None:
    """Pairs are not independent: one B identity with scores near the top against every B
    subject nearly doubles B's false matches. Counted as independent pairs the groups differ
    beyond doubt; resampling identities, the difference is not significant."""
    ss, labels = synth(GROUPS, {"A": uniform(), "B": uniform()},
                       lamb=("B", uniform(0.99, 1.0)), seed=2)
    rep = run(ss, labels, 0.99)
    a, b = rep["groups"]["A"]["fmr"], rep["groups"]["B"]["fmr"]
    naive_a, naive_b = clopper_pearson(a["count"], a["n"]), clopper_pearson(b["count"], b["n"])
    assert naive_b[0] > naive_a[1]  # pair-level intervals do not even overlap
    r = rep["ratios"]["fmr"]
    assert r["ratio"] > 1.5
    assert r["interval"][0] < 1.0 and r["significant"] is False


def test_a_group_too_small_for_an_interval_says_so() -> None:
    ss, labels = synth({**GROUPS, "C": (2, 1)}, {"A": uniform(), "B": stretched(3.0),
                                                 "C": uniform()})
    rep = run(ss, labels, 0.99)
    c = rep["groups"]["C"]
    for key in ("fmr", "fnmr", "fpir", "fnir"):
        assert c[key]["interval"] is None
        assert "too small for an interval" in c[key]["note"]
    assert "at least 10" in c["fmr"]["note"]
    r = rep["ratios"]["fmr"]
    assert r["left_out"] == ["C"] and (r["max_group"], r["min_group"]) == ("B", "A")
    assert r["significant"] is True
    lines = "\n".join(_text(rep))
    assert "too small for an interval" in lines


def _text(rep: dict) -> list[str]:  # type: ignore[type-arg]
    from edge.evaluation.demographics_report import format_text

    return format_text(rep)


def test_fnir_per_group_and_its_ratio() -> None:
    ss, labels = synth(GROUPS, {"A": uniform(0.0, 0.9), "B": uniform(0.0, 0.9)},
                       misses={"A": 0.1, "B": 0.3}, seed=2)
    rep = run(ss, labels, 0.95)
    a, b = rep["groups"]["A"]["fnir"], rep["groups"]["B"]["fnir"]
    assert a["n"] == b["n"] == 200 and a["interval_method"] == "clopper-pearson"
    assert a["interval"] == pytest.approx(list(clopper_pearson(a["count"], 200)))
    assert rep["groups"]["A"]["fnmr"]["count"] == a["count"]  # a mate is always rank 1 here
    r = rep["ratios"]["fnir"]
    assert (r["max_group"], r["min_group"]) == ("B", "A")
    assert r["ratio"] == pytest.approx(3.0, rel=0.35) and r["significant"] is True
    assert rep["groups"]["A"]["fpir"]["count"] == 0 and rep["groups"]["A"]["fpir"]["n"] == 50


def test_a_zero_count_makes_the_ratio_undefined_with_a_lower_bound() -> None:
    ss, labels = synth(GROUPS, {"A": uniform(0.0, 0.9), "B": uniform()})
    rep = run(ss, labels, 0.95)
    r = rep["ratios"]["fmr"]
    assert rep["groups"]["A"]["fmr"]["count"] == 0
    assert r["ratio"] is None and r["interval"][1] is None
    assert r["interval"][0] > 10 and r["significant"] is True  # B's 5 % against A's < 0.02 %
    assert "undefined" in r["note"]
    assert "undefined (no event in A)" in "\n".join(_text(rep))
    # a B rate of a single identity pair would not be: the lower bound goes to 0
    ss2, labels2 = synth(GROUPS, {"A": uniform(0.0, 0.9), "B": uniform(0.0, 0.9)},
                         lamb=("B", uniform(0.95, 0.96)))
    r2 = run(ss2, labels2, 0.95)["ratios"]["fmr"]
    assert r2["ratio"] is None and r2["interval"][0] < 1.0 and r2["significant"] is False


def test_the_sweep_finds_where_the_differences_stop() -> None:
    """B has extra impostor scores in [0.6, 0.8], A the same number in [0, 0.2]: the FMRs
    differ below 0.8 and are equal above it."""
    ss, labels = synth(GROUPS, STOP_AT_08)
    sweep = parse_sweep("0.5:0.95:0.01")
    rep = run(ss, labels, 0.7, sweep)
    sw = rep["sweep"]
    assert 0.78 <= sw["not_significant_from"] <= 0.84
    assert sw["lowest_not_significant"] <= sw["not_significant_from"]
    assert sw["ratio_at_most_1_5_from"] <= sw["not_significant_from"]
    by_t = {p["threshold"]: p for p in sw["points"]}
    assert by_t[0.7]["fmr_ratio"]["significant"] and by_t[0.7]["fmr_ratio"]["ratio"] > 2
    assert rep["ratios"]["fmr"]["significant"]  # the operating point 0.7 is in the band
    assert rep["operating_point"]["at_or_above_not_significant_from"] is False
    assert sw["fmr_zero_from"] == {"A": None, "B": None}  # U(0, 1) reaches 0.95


def test_labels_file_and_unlabelled_identities(tmp_path: Path) -> None:
    p = tmp_path / "l.tsv"
    p.write_text("\ufeff# identity\tgroup\r\n\r\nA000\tA\r\nB000\tB group\n", encoding="utf-8")
    assert load_labels(p) == {"A000": "A", "B000": "B group"}  # BOM and CRLF of a spreadsheet
    for body, msg in (("A000 A\n", "expected 'identity<TAB>group'"),
                      ("A000\tA\nA000\tB\n", "labelled twice"), ("# nothing\n", "no labels")):
        p.write_text(body)
        with pytest.raises(UsageError, match=msg):
            load_labels(p)
    ss, labels = synth(GROUPS, {"A": uniform(), "B": uniform()}, unlabelled=3)
    pop = population(ss, labels)
    assert (pop.unlabelled_identities, pop.unlabelled_probes, pop.unlabelled_subjects) == \
        (3, 3, 0)
    assert pop.ss.scores.shape == (500, 200)
    assert pop.labels_not_in_data == 0
    with pytest.raises(UsageError, match="no labelled identity"):
        population(ss, {"someone": "A"})
    old = ScoreSet(ss.scores, ss.mate, ss.gallery_ids)
    with pytest.raises(UsageError, match="no probe identities"):
        population(old, labels)


def test_intervals_against_exact_values() -> None:
    assert clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0))
    from math import comb

    for x in (0.05, 0.3, 0.7):  # I_x(k, n-k+1) = P(Binomial(n, x) >= k)
        tail = sum(comb(12, i) * x**i * (1 - x) ** (12 - i) for i in range(4, 13))
        assert betainc(4, 9, x) == pytest.approx(tail, rel=1e-9)
    w = identity_weights([0, 0, 0, 1, 1], reps=50, seed=3)
    assert w.shape == (50, 5)
    assert np.all(w[:, :3].sum(axis=1) == 3) and np.all(w[:, 3:].sum(axis=1) == 2)


# --- the command ------------------------------------------------------------------------------


STOP_AT_08 = {"A": mixture(0.5, uniform(), uniform(0.0, 0.2)),
              "B": mixture(0.5, uniform(), uniform(0.6, 0.8))}


def _files(tmp_path: Path, within: dict[str, Draw] | None = None) -> tuple[Path, Path]:
    ss, labels = synth(GROUPS, within or {"A": uniform(), "B": stretched(3.0)}, unlabelled=2)
    s = tmp_path / "s.npz"
    ss.save(s)
    lab = tmp_path / "labels.tsv"
    lab.write_text("".join(f"{k}\t{v}\n" for k, v in labels.items()))
    return s, lab


def test_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    s, lab = _files(tmp_path)
    code = main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.99", "--sweep", "0.95:1.0:0.01", "--reps", "200",
                 "--json", "--plot", str(tmp_path / "d.png")])
    out, err = capsys.readouterr()
    assert code == 0
    rep = json.loads(out)
    assert rep["labels"]["unlabelled_identities_left_out"] == 2
    assert rep["ratios"]["fmr"]["significant"] is True
    assert rep["intervals"]["fpir_fnir"].startswith("Clopper-Pearson")
    assert "bootstrap over identities" in rep["intervals"]["fmr_fnmr"]
    assert [p["threshold"] for p in rep["sweep"]["points"]] == [0.95, 0.96, 0.97, 0.98, 0.99,
                                                                1.0]
    assert "bootstrap [" in err  # the progress bar
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.99", "--reps", "200", "--no-progress"]) == 0
    text, err = capsys.readouterr()
    assert err == ""
    assert "FMR ratio B/A" in text and ": significant" in text
    assert "left out, no label: 2 identities" in text
    assert "Clopper-Pearson" in text and "bootstrap over identities" in text


def test_cli_calibrated_operating_point(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    s, lab = _files(tmp_path)
    code = main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--watchlist-size", "20", "--fpir", "0.01", "--reps", "200", "--json",
                 "--no-progress"])
    assert code == 0
    op = json.loads(capsys.readouterr().out)["operating_point"]
    cal = calibrate(ScoreSet.load(s), 0.01, 20)
    assert op["source"] == "calibrated" and op["threshold"] == pytest.approx(cal.threshold)
    assert op["calibration"]["watchlist_size"] == 20
    assert op["everyone"]["threshold"] == pytest.approx(cal.threshold)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "say the operating point"),
        (["--threshold", "0.5", "--watchlist-size", "5"], "say the operating point"),
        (["--threshold", "0.5", "--reps", "10"], "--reps must be at least 100"),
        (["--threshold", "0.5", "--sweep", "0.9:0.1:0.1"], "FROM < TO"),
        (["--threshold", "0.5", "--sweep", "x"], "FROM:TO:STEP"),
        (["--threshold", "0.5", "--labels", "{t}/absent.tsv"], "no such file"),
        (["--threshold", "0.5", "--labels", "{t}/bad.tsv"], "bad.tsv:1: expected"),
        (["--threshold", "0.5", "--scores", "{t}/old.npz"], "no probe identities"),
        (["--threshold", "0.5", "--lfw", "{t}"], "either --scores or --lfw"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    s, lab = _files(tmp_path)
    (tmp_path / "bad.tsv").write_text("A000 A\n")
    ss = ScoreSet.load(s)
    ScoreSet(ss.scores, ss.mate, ss.gallery_ids).save(tmp_path / "old.npz")
    argv = ["eval", "demographics", "--scores", str(s), "--labels", str(lab), "--no-progress"]
    for a in extra:  # a later option of the same name wins
        argv.append(a.format(t=tmp_path))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edge: ") and message in err


# --- the manifest record and the build's warning ------------------------------------------------


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    from tests.test_model_import import copy_models

    return copy_models(tmp_path / "models")


def _scored_by_dlib(tmp_path: Path, models: Path,
                    within: dict[str, Draw] | None = None) -> tuple[Path, Path]:
    """A synthetic score set that says it was made by the repository's dlib int8 + flip."""
    from edge.vision.embed import embedder_identity
    from edge.vision.manifest import Manifest

    s, lab = _files(tmp_path, within)
    ss = ScoreSet.load(s)
    sha = Manifest.load(models).entry("dlib_resnet_v1_int8").sha256
    info = {"embedder": "dlib_resnet_v1_int8", "embedder_sha256": embedder_identity(sha, True),
            "flip": "on"}
    ScoreSet(ss.scores, ss.mate, ss.gallery_ids, label="dlib", info=info,
             probe_ids=ss.probe_ids).save(s)
    return s, lab


def test_record_manifest_and_the_build_warning(
    tmp_path: Path, models_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.vision.embed import embedder_identity
    from edge.vision.manifest import Manifest
    from edge.watchlist.bundle import EmbedderInfo
    from edge.watchlist.enrol import demographics_warning

    s, lab = _scored_by_dlib(tmp_path, models_copy)
    before = (models_copy / "manifest.json").read_text()
    assert main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.99", "--sweep", "0.95:1.0:0.01", "--reps", "200",
                 "--models-dir", str(models_copy), "--record-manifest", "--no-progress"]) == 0
    assert "measured.demographics" in capsys.readouterr().out
    rec = Manifest.load(models_copy).entry("dlib_resnet_v1_int8").measured["demographics"]
    floor = rec["threshold_free_of_significant_differences"]
    assert floor is not None and 0.95 < floor <= 1.0  # B's 3x FMR is significant at 0.95
    assert rec["flip"] is True and rec["groups"] == {"A": 150, "B": 150}
    assert rec["command"].startswith("edge eval demographics --labels ")
    assert "--threshold 0.99" in rec["command"] and "--record-manifest" in rec["command"]
    # nothing else in the manifest changed
    after, old = json.loads((models_copy / "manifest.json").read_text()), json.loads(before)
    for doc in (after, old):
        doc["models"]["dlib_resnet_v1_int8"]["measured"].pop("demographics", None)
    assert after == old

    sha = Manifest.load(models_copy).entry("dlib_resnet_v1_int8").sha256
    info = EmbedderInfo("dlib_resnet_v1_int8", embedder_identity(sha, True), "dlib150",
                        "euclidean", 128)
    below = demographics_warning(info, models_copy, floor - 0.01)
    assert below is not None and below.startswith("warning: threshold ")
    assert f"below {floor:.3f}" in below and "\n" not in below
    assert demographics_warning(info, models_copy, floor) is None
    no_flip = EmbedderInfo(info.name, sha, "dlib150", "euclidean", 128)
    assert demographics_warning(no_flip, models_copy, 0.1) is None  # measured with flip only
    # significant at every swept threshold: no floor, and the warning says so at any threshold
    assert main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.99", "--sweep", "0.8:0.9:0.05", "--reps", "200",
                 "--models-dir", str(models_copy), "--record-manifest", "--no-progress"]) == 0
    rec = Manifest.load(models_copy).entry("dlib_resnet_v1_int8").measured["demographics"]
    assert rec["threshold_free_of_significant_differences"] is None
    every = demographics_warning(info, models_copy, 0.99)
    assert every is not None and "at every threshold measured up to 0.9" in every


def test_record_manifest_refuses_scores_of_another_file(
    tmp_path: Path, models_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s, lab = _files(tmp_path)
    ss = ScoreSet.load(s)
    ScoreSet(ss.scores, ss.mate, ss.gallery_ids, info={
        "embedder": "dlib_resnet_v1_int8", "embedder_sha256": "0" * 64, "flip": "on"},
        probe_ids=ss.probe_ids).save(s)
    before = (models_copy / "manifest.json").read_bytes()
    assert main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.99", "--reps", "200", "--models-dir", str(models_copy),
                 "--record-manifest", "--no-progress"]) == 2
    assert "made with another dlib_resnet_v1_int8 file" in capsys.readouterr().err
    assert (models_copy / "manifest.json").read_bytes() == before


def test_watchlist_build_warns_below_the_recorded_threshold(
    tmp_path: Path, models_copy: Path, photos_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real build (models, enrolment) prints the one-line warning, and not above it."""
    from tests.test_watchlist_cli import _deployment, _faces, _subject

    s, lab = _scored_by_dlib(tmp_path, models_copy, STOP_AT_08)
    assert main(["eval", "demographics", "--scores", str(s), "--labels", str(lab),
                 "--threshold", "0.7", "--sweep", "0.5:0.95:0.01", "--reps", "200",
                 "--models-dir", str(models_copy), "--record-manifest", "--no-progress"]) == 0
    capsys.readouterr()
    keys = tmp_path / "keys"
    assert main(["keys", "init", "--out", str(keys)]) == 0
    assert main(["keys", "init", "--out", str(keys), "--device", "van-01"]) == 0
    subjects = tmp_path / "subjects"
    _subject(subjects, "S-GOOD", "wanted_court", {"ref.jpg": _faces(photos_dir)[0]})
    deployment = _deployment(tmp_path)  # threshold 0.45

    def build(dep: Path) -> str:
        argv = ["watchlist", "build", "--subjects", str(subjects), "--deployment", str(dep),
                "--signing-key", str(keys / "signing.key"), "--recipients",
                str(keys / "van-01.pub"), "--out", str(tmp_path / "wl.lfrb"),
                "--models", str(models_copy), "--embedder", "dlib_resnet_v1", "--no-progress"]
        capsys.readouterr()
        assert main(argv) == 0
        return capsys.readouterr().out

    from edge.vision.manifest import Manifest

    rec = Manifest.load(models_copy).entry("dlib_resnet_v1_int8").measured["demographics"]
    floor = rec["threshold_free_of_significant_differences"]
    assert floor is not None and 0.78 <= floor <= 0.84
    out = build(deployment)
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "threshold 0.450 is below" in warnings[0]
    above = tmp_path / "above.toml"
    above.write_text(deployment.read_text().replace("threshold = 0.45",
                                                    f"threshold = {floor:.2f}"))
    assert "warning:" not in build(above)


# --- real LFW ------------------------------------------------------------------------------


@pytest.mark.lfw
def test_small_lfw_run_with_the_gender_labels(
    lfw_dir: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 women and 20 men with two or more images (gallery + one probe), 12 of each with
    one (non-mated), and one identity the label file does not have, end to end."""
    from edge.errors import ModelError
    from edge.vision.faces import FaceEngine

    try:
        FaceEngine.from_models(models_dir, threads=1)
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")
    gender = lfw_dir.parent / "gender.tsv"
    if not gender.is_file():
        pytest.skip(f"{gender} is absent")
    labels = load_labels(gender)
    by_count: dict[tuple[str, bool], list[Path]] = {}
    for d in sorted(lfw_dir.iterdir()):
        if d.name in labels:
            n = len(list(d.glob("*.jpg")))
            by_count.setdefault((labels[d.name], n >= 2), []).append(d)
    unlabelled = next(d for d in sorted(lfw_dir.iterdir()) if d.name not in labels)
    for g in ("F", "M"):
        for d in by_count[(g, True)][:20]:
            imgs = sorted(d.glob("*.jpg"))
            (tmp_path / "g" / d.name).mkdir(parents=True)
            (tmp_path / "g" / d.name / imgs[0].name).symlink_to(imgs[0])
            (tmp_path / "p" / d.name).mkdir(parents=True)
            (tmp_path / "p" / d.name / imgs[1].name).symlink_to(imgs[1])
        for d in [*by_count[(g, False)][:12], *([unlabelled] if g == "F" else [])]:
            img = next(d.glob("*.jpg"))
            (tmp_path / "p" / d.name).mkdir(parents=True)
            (tmp_path / "p" / d.name / img.name).symlink_to(img)
    code = main(["eval", "demographics", "--gallery", str(tmp_path / "g"), "--probes",
                 str(tmp_path / "p"), "--labels", str(gender), "--threshold", "0.5",
                 "--threads", "1", "--reps", "200", "--json", "--no-progress"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["labels"]["unlabelled_identities_left_out"] == 1
    assert rep["labels"]["labels_not_in_the_data"] == len(labels) - 64
    for g in ("F", "M"):
        v = rep["groups"][g]
        assert (v["identities"], v["gallery_subjects"], v["probes"]) == (32, 20, 32)
        assert v["fmr"]["n"] == 20 * 19 + 12 * 20  # mated probes x the other 19, non-mated x 20
        assert v["fnir"]["n"] == 20 and v["fpir"]["n"] == 12
        for key in ("fmr", "fnmr", "fpir", "fnir"):
            lo, hi = v[key]["interval"]
            assert lo <= v[key]["rate"] <= hi
        assert v["fnir"]["rate"] < 0.5  # the right person is found for most at 0.5
    assert rep["fmr_matrix"]["cells"]["F"]["M"]["n"] == 32 * 20
    assert rep["sweep"]["points"] and rep["operating_point"]["threshold"] == 0.5


def test_bootstrap_replicates_weigh_each_pair_by_its_identities_draws() -> None:
    """The fast replicates (cumulative sums over sorted pairs, denominators from pair counts
    per identity) equal the sum over every impostor pair of w[probe] * w[subject]."""
    from edge.evaluation.demographics import PairCell, genuine_units

    ss, labels = synth({"A": (6, 3), "B": (5, 4)}, {"A": uniform(), "B": uniform()}, seed=5)
    scores = ss.scores.copy()
    scores[3, :] = -np.inf  # a probe without a face: in no pair
    ss = ScoreSet(scores, ss.mate, ss.gallery_ids, probe_ids=ss.probe_ids)
    pop = population(ss, labels)
    w = identity_weights(pop.group_of, reps=7, seed=1)
    thr = np.array([0.2, 0.5, 0.8])
    for ga in range(2):
        for gb in range(2):
            cell = PairCell(pop, ga, gb, float(thr[0]))
            num, den = cell.weighted(w, thr)
            want_num = np.zeros((7, 3))
            want_den = np.zeros(7)
            for i, a in enumerate(pop.probe_id):
                for j, b in enumerate(pop.subject_id):
                    if (pop.group_of[a], pop.group_of[b]) != (ga, gb) or ss.mate[i] == j:
                        continue
                    s = float(ss.scores[i, j])
                    if not np.isfinite(s):
                        continue
                    want_den += w[:, a] * w[:, b]
                    want_num += (w[:, a] * w[:, b])[:, None] * (s >= thr)[None, :]
            assert np.allclose(den, want_den) and np.allclose(num, want_num)
            assert list(cell.counts(thr)) == [int(np.sum(
                [(pop.group_of[pop.probe_id[i]], pop.group_of[pop.subject_id[j]]) == (ga, gb)
                 and ss.mate[i] != j and ss.scores[i, j] >= t
                 for i in range(ss.scores.shape[0]) for j in range(ss.scores.shape[1])]))
                for t in thr]
    g = genuine_units(pop, 0)
    num, den = g.weighted(w, thr)
    rows = [i for i in range(len(pop.probe_id)) if ss.mate[i] >= 0
            and pop.group_of[pop.probe_id[i]] == 0]
    want_den = sum(w[:, pop.probe_id[i]] for i in rows)
    want_num = sum(w[:, pop.probe_id[i]][:, None]
                   * (ss.scores[i, ss.mate[i]] < thr)[None, :] for i in rows)
    assert np.allclose(den, want_den) and np.allclose(num, want_num)
