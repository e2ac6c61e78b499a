"""The enrolment input files: ``subject.toml`` and ``deployment.toml``, validated strictly.

Every problem is collected and raised at once as one :class:`ConfigError` (one line
each). Used by :mod:`edge.watchlist.enrol`, which re-exports these names.

``subject.toml`` (unknown keys are errors)::

    category = "wanted_court"      # one of edge.watchlist.bundle.CATEGORIES
    reference = "PNC 24/123456X"   # the case / warrant reference
    source = "custody image"       # where the images come from
    capture_date = 2024-05-01      # when they were taken (TOML date or "YYYY-MM-DD")
    legal_basis = "PACE Code D"    # the legal basis for holding them
    # id = "S-0001"                # optional, default: the folder name

``deployment.toml`` (unknown keys are errors; times are UTC offset date-times)::

    deployment_id = "D-2026-0042"
    location = "Example Street, Example Town"
    start = 2026-11-22T10:00:00Z
    end = 2026-11-22T18:00:00Z
    authorising_officer = "Supt 1234"
    approved_at = 2026-11-21T09:00:00Z
    threshold = 0.45               # a SIMILARITY (higher = stricter); see design.md
    signage_confirmed = true       # must be true (safeguard 12)
    max_watchlist_size = 500
    sequence = 7                   # strictly increasing per device fleet
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.compat import UTC, fromisoformat, tomllib
from edge.errors import ConfigError, UsageError
from edge.watchlist.bundle import CATEGORIES, ID_RE, MAX_TEXT, DeploymentSpec


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc: dict[str, Any] = tomllib.load(fh)
            return doc
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _text(d: dict[str, Any], key: str, problems: list[str], where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v.strip():
        problems.append(f"{where}: {key} must be a non-empty string")
        return ""
    if len(v) > MAX_TEXT or not v.isprintable():
        problems.append(f"{where}: {key} is too long or has control characters")
        return ""
    return v


def _utc(d: dict[str, Any], key: str, problems: list[str], where: str) -> dt.datetime:
    v = d.get(key)
    if isinstance(v, str):
        try:
            v = fromisoformat(v)
        except ValueError:
            problems.append(f"{where}: {key} is not a date-time")
            return dt.datetime.min.replace(tzinfo=UTC)
    if not isinstance(v, dt.datetime) or v.tzinfo is None or v.utcoffset() is None:
        problems.append(f"{where}: {key} must be a date-time with a UTC offset (...T10:00:00Z)")
        return dt.datetime.min.replace(tzinfo=UTC)
    if v.microsecond:
        problems.append(f"{where}: {key} must be in whole seconds")
    return v.astimezone(UTC)


def _unknown(d: dict[str, Any], allowed: Sequence[str], where: str) -> list[str]:
    return [f"{where}: unknown key {k!r}" for k in sorted(set(d) - set(allowed))]


DEPLOYMENT_KEYS = (
    "deployment_id",
    "location",
    "start",
    "end",
    "authorising_officer",
    "approved_at",
    "threshold",
    "signage_confirmed",
    "max_watchlist_size",
    "sequence",
)


def load_deployment(path: Path) -> DeploymentSpec:
    """Parse and validate ``deployment.toml``; :class:`ConfigError` lists every problem."""
    d = _read_toml(path)
    w = str(path)
    problems = _unknown(d, DEPLOYMENT_KEYS, w)
    problems += [f"{w}: missing {k}" for k in DEPLOYMENT_KEYS if k not in d]
    if problems:
        raise ConfigError(problems)
    dep_id = _text(d, "deployment_id", problems, w)
    if dep_id and not ID_RE.fullmatch(dep_id):
        problems.append(f"{w}: deployment_id must be 1-64 letters, digits, '.', '_' or '-'")
    start, end = _utc(d, "start", problems, w), _utc(d, "end", problems, w)
    approved = _utc(d, "approved_at", problems, w)
    if not problems and end <= start:
        problems.append(f"{w}: end must be after start")
    if not problems and approved >= end:
        problems.append(f"{w}: approved_at must be before the end of the window")
    threshold = d["threshold"]
    if type(threshold) not in (int, float) or not math.isfinite(threshold) \
            or not 0.0 < threshold < 1.0:
        problems.append(f"{w}: threshold must be a similarity between 0 and 1 (higher = stricter)")
    if d["signage_confirmed"] is not True:
        problems.append(
            f"{w}: signage_confirmed must be true: a deployment is armed only when signage "
            "is confirmed"
        )
    size = d["max_watchlist_size"]
    if type(size) is not int or not 1 <= size <= 100_000:
        problems.append(f"{w}: max_watchlist_size must be an integer 1..100000")
    seq = d["sequence"]
    if type(seq) is not int or not 0 <= seq <= 2**53:
        problems.append(f"{w}: sequence must be a non-negative integer")
    location = _text(d, "location", problems, w)
    officer = _text(d, "authorising_officer", problems, w)
    if problems:
        raise ConfigError(problems)
    return DeploymentSpec(
        deployment_id=dep_id,
        location=location,
        start=start,
        end=end,
        authorising_officer=officer,
        approved_at=approved,
        threshold=float(threshold),
        signage_confirmed=True,
        max_watchlist_size=size,
        sequence=seq,
    )


SUBJECT_KEYS = ("category", "reference", "source", "capture_date", "legal_basis")


@dataclass(frozen=True, slots=True)
class SubjectMeta:
    subject_id: str
    category: str
    reference: str
    source: str
    capture_date: str
    legal_basis: str


def load_subject(folder: Path) -> SubjectMeta:
    """Parse ``folder/subject.toml``; :class:`ConfigError` lists every problem."""
    path = folder / "subject.toml"
    if not path.exists():
        raise ConfigError([f"{path}: missing (every subject folder needs a subject.toml)"])
    d = _read_toml(path)
    w = str(path)
    problems = _unknown(d, (*SUBJECT_KEYS, "id"), w)
    problems += [f"{w}: missing {k}" for k in SUBJECT_KEYS if k not in d]
    if problems:
        raise ConfigError(problems)
    sid = d.get("id", folder.name)
    if not isinstance(sid, str) or not ID_RE.fullmatch(sid):
        problems.append(f"{w}: subject id {sid!r} must be 1-64 letters, digits, '.', '_' or '-'")
    cat = d["category"]
    if cat not in CATEGORIES:
        problems.append(
            f"{w}: category {cat!r} is not one of the permitted categories: "
            + ", ".join(CATEGORIES)
        )
    cap = d["capture_date"]
    if isinstance(cap, dt.datetime):
        cap = cap.date()
    if isinstance(cap, str):
        try:
            cap = dt.date.fromisoformat(cap)
        except ValueError:
            cap = None
    if not isinstance(cap, dt.date):
        problems.append(f"{w}: capture_date must be a date YYYY-MM-DD")
        cap_s = ""
    else:
        cap_s = cap.isoformat()
        if cap > dt.datetime.now(UTC).date():
            problems.append(f"{w}: capture_date {cap_s} is in the future")
    ref = _text(d, "reference", problems, w)
    src = _text(d, "source", problems, w)
    basis = _text(d, "legal_basis", problems, w)
    if problems:
        raise ConfigError(problems)
    return SubjectMeta(str(sid), str(cat), ref, src, cap_s, basis)
