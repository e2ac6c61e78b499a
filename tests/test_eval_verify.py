"""``edge eval verify``: pairs parsing, the 10-fold protocol, errors as one line, LFW subset."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import UsageError
from edge.evaluation.metrics import best_threshold, tar_at_far, ten_fold, verification_report
from edge.evaluation.pairs import parse_pairs


def _images(root: Path, names: dict[str, int]) -> Path:
    img = np.full((60, 60, 3), 128, dtype=np.uint8)
    for name, n in names.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            cv2.imwrite(str(root / name / f"{name}_{i:04d}.jpg"), img)
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", "verify", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_pairs_folds_and_paths(tmp_path: Path) -> None:
    p = tmp_path / "pairs.txt"
    p.write_text("2\t1\nAl\t1\t2\nAl 1 Bo 3\nBo\t2\t3\nBo\t1\tAl\t2\n")
    pl = parse_pairs(p, tmp_path / "img")
    assert (pl.folds, pl.per_fold, len(pl.pairs)) == (2, 1, 4)
    assert [x.same for x in pl.pairs] == [True, False, True, False]
    assert [x.fold for x in pl.pairs] == [0, 0, 1, 1]
    assert pl.pairs[1].b == tmp_path / "img" / "Bo" / "Bo_0003.jpg"
    assert pl.pairs[2].line == 4
    assert len(pl.images()) == 5  # Al_0001 is used twice


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1 1\nAl 1 2\nAl 1\n", r"pairs\.txt:3: expected 'Name i j'"),
        ("1 1\nAl 1 x\nAl 1 Bo 1\n", r"pairs\.txt:2: image number 'x'"),
        ("1 1\nAl 1 Bo 2\nAl 1 2\n", r"pairs\.txt:2: expected a matched pair"),
        ("2 1\nAl 1 2\nAl 1 Bo 1\n", r"header promises 4 pairs, file has 2"),
        ("ten pairs\n", r"pairs\.txt:1: expected a header"),
        ("", r"pairs file is empty"),
    ],
)
def test_malformed_pairs_raise_usage_error(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    with pytest.raises(UsageError, match=needle):
        parse_pairs(p, tmp_path)


def test_cli_malformed_line_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "img", {"Al": 2})
    p = tmp_path / "pairs.txt"
    p.write_text("1 1\nAl 1 2\nAl 1 Bo\n")
    code, out, err = _run(capsys, "--images", str(images), "--pairs", str(p))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("edge: ") and f"{p}:3:" in err
    assert "Traceback" not in err


def test_cli_missing_image_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _images(tmp_path / "img", {"Al": 2, "Bo": 1})
    p = tmp_path / "pairs.txt"
    p.write_text("1 1\nAl 1 2\nAl 1 Bo 7\n")
    code, _, err = _run(capsys, "--images", str(images), "--pairs", str(p))
    assert code == 2 and err.count("\n") == 1
    assert "Bo_0007.jpg: image not found (pairs line 3)" in err


def test_cli_missing_pairs_file_and_images_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "--images", str(tmp_path), "--pairs", str(tmp_path / "nope.txt"))
    assert code == 2 and "nope.txt: cannot read pairs file" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "--images", str(tmp_path / "nodir"), "--pairs", str(tmp_path / "x"))
    assert code == 2 and "nodir: images directory not found" in err


def test_cli_unreadable_image_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models_dir: Path
) -> None:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    images = _images(tmp_path / "img", {"Al": 2, "Bo": 1})
    (images / "Al" / "Al_0002.jpg").write_bytes(b"not a jpeg at all")
    p = tmp_path / "pairs.txt"
    p.write_text("1 1\nAl 1 2\nAl 1 Bo 1\n")
    code, _, err = _run(
        capsys, "--images", str(images), "--pairs", str(p), "--models-dir", str(models_dir)
    )
    assert code != 0 and err.strip().count("\n") <= 1 and "Traceback" not in err
    if code == 2:  # models complete: the image is the problem
        assert "Al_0002.jpg: cannot decode image (pairs line 2)" in err
    else:  # models incomplete (no detector yet): a ModelError line
        assert code == 3


def test_best_threshold_and_ten_fold() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([False, False, False, True, True, True])
    thr, acc = best_threshold(scores, same)
    assert acc == 1.0 and 0.3 < thr < 0.7
    rng = np.random.default_rng(1)
    n = 600
    same = np.tile(np.repeat([True, False], 30), 10)
    scores = np.where(same, rng.normal(0.6, 0.1, n), rng.normal(0.2, 0.1, n))
    folds = np.repeat(np.arange(10), 60)
    res = ten_fold(scores, same, folds)
    assert len(res.fold_accuracies) == 10
    assert 0.95 < res.accuracy <= 1.0 and 0.3 < res.threshold < 0.5
    # a threshold picked on 9 folds is applied to the 10th: flipping one fold's labels hurts only it
    bad = same.copy()
    bad[folds == 0] = ~bad[folds == 0]
    res_bad = ten_fold(scores, bad, folds)
    assert res_bad.fold_accuracies[0] < 0.1 and min(res_bad.fold_accuracies[1:]) > 0.9


def test_tar_at_far() -> None:
    neg = np.linspace(0.0, 0.5, 1000)  # 1000 impostors
    pos = np.array([0.4997, 0.499, 0.6, 0.7])
    scores = np.concatenate([pos, neg])
    same = np.concatenate([np.ones(4, bool), np.zeros(1000, bool)])
    tar, thr = tar_at_far(scores, same, 1e-3)  # one false accept allowed (the 0.5 impostor)
    assert neg[-2] < thr < neg[-1] and tar == 0.75
    tar, thr = tar_at_far(scores, same, 1e-4)  # none allowed
    assert thr > 0.5 and tar == 0.5
    rep = verification_report(scores, same, np.zeros(len(scores), dtype=np.int64))
    assert set(rep["tar_at_far"]) == {"0.001", "0.0001"}  # type: ignore[arg-type]


@pytest.mark.lfw
def test_lfw_subset(
    tmp_path: Path,
    lfw_dir: Path,
    lfw_pairs: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    lines = lfw_pairs.read_text().splitlines()
    sub = ["2\t8"]
    for fold in range(2):  # first 8 matched + 8 mismatched pairs of folds 1 and 2
        base = 1 + fold * 300
        sub += lines[base : base + 8] + lines[base + 150 : base + 158]
    p = tmp_path / "pairs.txt"
    p.write_text("\n".join(sub) + "\n")
    code, out, err = _run(
        capsys,
        "--images",
        str(lfw_dir),
        "--pairs",
        str(p),
        "--models-dir",
        str(models_dir),
        "--json",
    )
    if code == 3:
        pytest.skip(f"models incomplete: {err.strip()}")
    assert code == 0, err
    rep = json.loads(out)
    for key in ("accuracy", "accuracy_std", "threshold", "tar_at_far", "pairs", "failed_to_detect"):
        assert key in rep
    assert rep["pairs"] == 32 and set(rep["tar_at_far"]) == {"0.001", "0.0001"}
    assert rep["accuracy"] >= 0.85
    assert 0.2 < rep["threshold"] < 0.6
    assert "verify [" in err  # progress bar on stderr


def test_no_face_policy_counts_and_falls_back(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Faceless images are counted in failed_to_detect and embedded from the fixed box."""
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    images = _images(tmp_path / "img", {"Al": 2, "Bo": 1})
    p = tmp_path / "pairs.txt"
    p.write_text("1 1\nAl 1 2\nAl 1 Bo 1\n")
    code, out, err = _run(
        capsys,
        "--images",
        str(images),
        "--pairs",
        str(p),
        "--models-dir",
        str(models_dir),
        "--json",
        "--no-progress",
    )
    if code == 3:
        pytest.skip(f"models incomplete: {err.strip()}")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["images"] == 3 and rep["failed_to_detect"] == 3
    assert rep["fallback_fixed_box"] + rep["fallback_low_score"] == 3
    assert "verify [" not in err
