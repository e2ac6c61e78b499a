"""LFW ``pairs.txt`` parsing.

Format: a header line ``<folds> <n>``, then for each fold ``n`` matched lines
``Name i j`` followed by ``n`` mismatched lines ``NameA i NameB j``. Image
``Name i`` is ``<images>/<Name>/<Name>_<iiii>.jpg``. Fields may be separated by
tabs or spaces. A malformed line raises :class:`UsageError` naming the file and
line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.errors import UsageError


@dataclass(frozen=True, slots=True)
class Pair:
    a: Path
    b: Path
    same: bool
    fold: int
    line: int


@dataclass(frozen=True, slots=True)
class PairList:
    folds: int
    per_fold: int
    pairs: list[Pair]

    def images(self) -> list[Path]:
        """Every distinct image path, in first-use order."""
        seen: dict[Path, None] = {}
        for p in self.pairs:
            seen.setdefault(p.a)
            seen.setdefault(p.b)
        return list(seen)


def image_path(images: Path, name: str, index: int) -> Path:
    return images / name / f"{name}_{index:04d}.jpg"


def _index(token: str, where: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise UsageError(f"{where}: image number {token!r} is not an integer") from None
    if value < 1:
        raise UsageError(f"{where}: image number {value} must be >= 1")
    return value


def parse_pairs(path: Path, images: Path) -> PairList:
    """Parse an LFW pairs file; image paths are resolved under ``images``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read pairs file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: pairs file is not UTF-8 text") from None
    lines = text.splitlines()
    numbered = [(i + 1, ln.split()) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise UsageError(f"{path}: pairs file is empty")
    head_no, head = numbered[0]
    folds: int
    per_fold: int
    body = numbered[1:]
    if len(head) == 2 and all(t.isdigit() for t in head):
        folds, per_fold = int(head[0]), int(head[1])
        if folds < 1 or per_fold < 1:
            raise UsageError(f"{path}:{head_no}: header needs positive '<folds> <pairs>'")
    elif len(head) in (3, 4):
        # No header: a single fold of whatever follows (matched and mismatched mixed).
        folds, per_fold = 1, 0
        body = numbered
    else:
        raise UsageError(f"{path}:{head_no}: expected a header '<folds> <pairs per fold>'")
    pairs: list[Pair] = []
    for k, (line_no, tok) in enumerate(body):
        where = f"{path}:{line_no}"
        if per_fold:
            fold = k // (2 * per_fold)
            expect_same = (k % (2 * per_fold)) < per_fold
        else:
            fold, expect_same = 0, len(tok) == 3
        if len(tok) == 3:
            same = True
            a = image_path(images, tok[0], _index(tok[1], where))
            b = image_path(images, tok[0], _index(tok[2], where))
        elif len(tok) == 4:
            same = False
            a = image_path(images, tok[0], _index(tok[1], where))
            b = image_path(images, tok[2], _index(tok[3], where))
        else:
            raise UsageError(
                f"{where}: expected 'Name i j' or 'NameA i NameB j', got {len(tok)} fields"
            )
        if per_fold and same != expect_same:
            kind = "matched" if expect_same else "mismatched"
            raise UsageError(f"{where}: expected a {kind} pair at this position of fold {fold + 1}")
        pairs.append(Pair(a, b, same, fold, line_no))
    if per_fold and len(pairs) != folds * 2 * per_fold:
        raise UsageError(
            f"{path}: header promises {folds * 2 * per_fold} pairs, file has {len(pairs)}"
        )
    if not pairs:
        raise UsageError(f"{path}: no pairs")
    return PairList(folds, per_fold, pairs)
