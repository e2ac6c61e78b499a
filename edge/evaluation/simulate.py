"""A synthetic deployment stream with ground truth: passers-by walking past a camera.

Faces come from an LFW-style folder (one sub-folder per identity, aligned
crops with the face in the middle, like LFW deep-funneled's 250x250 images).
Each passer-by is one picture of one identity (or, with ``views``, several), cut
out with a soft elliptical head mask (or shown as the whole tile), scaled so that
its face is 60-160 px wide, and moved across a procedural background (gradients, shop fronts,
texture; no external images) with its own lighting, colour cast, blur and a
small roll; the frame gets slow global lighting changes and sensor noise.
Passers-by further away are smaller and higher in the frame; some cross the
view, some walk towards the camera (their face grows).

A fraction of passers-by is *watchlisted*: their identity is on the
watchlist, and the watchlist enrols *other* images of that identity than the
one shown, so only identities with at least two images can be watchlisted.
The watchlist also holds subjects who never appear (distractors, as on a real
list). Everyone else is drawn from identities not on the watchlist.

Everything random is drawn from one seed up front (:func:`plan_clip`), and each
frame's noise from ``(seed, frame)``: the same seed gives the same truth file
and the same frames.

A street that looks like one (``edge simulate --degrade``, or each effect on its own):
the camera's per-frame effects of :mod:`edge.evaluation.simulate_camera` (motion blur
along the walk, defocus, sensor noise, JPEG compression, brightness and gamma drift, a
head's roll and scale wobble), and ``views``: a passer-by shows several of its
identity's images along the walk (as a head turns), never an enrolled one; the truth's
``image`` names the first. The scale wobble moves the truth boxes with the face; the
truth file's format is the same with or without effects (``params`` records them).

The code is split by seam: :mod:`simulate_config` (settings), :mod:`simulate_plan`
(the plan and its truth), :mod:`simulate_render` (pixels and the MP4),
:mod:`simulate_camera` (camera effects), :mod:`simulate_subjects` (the watchlist's
folders); every public name is importable from here as before.

The truth file's format is :class:`edge.evaluation.stream.Truth`; the face box
per frame is LFW's typical face box (HOG detector's, measured on 199 LFW
deep-funneled images: (69, 79)-(175, 185) in the 250x250 tile) mapped into the
frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edge.evaluation.simulate_camera import Camera, disc_kernel, motion_kernel
from edge.evaluation.simulate_config import (
    FACE_BOX_TILE,
    HEAD_ELLIPSE,
    IMAGE_SUFFIXES,
    TILE,
    CameraConfig,
    MaskKind,
    SimConfig,
    parse_range,
    parse_size,
)
from edge.evaluation.simulate_plan import Plan, Walker, plan_clip, scan_identities
from edge.evaluation.simulate_render import (
    Renderer,
    background,
    check_clip,
    head_mask,
    load_tile,
    write_clip,
)
from edge.evaluation.simulate_subjects import enrolment_checker, subject_toml, write_subjects
from edge.evaluation.stream import Truth

__all__ = [
    "FACE_BOX_TILE", "HEAD_ELLIPSE", "IMAGE_SUFFIXES", "TILE", "Camera", "CameraConfig",
    "MaskKind", "Plan", "Renderer", "SimConfig", "Walker", "background", "check_clip",
    "disc_kernel", "enrolment_checker", "frames_with_faces", "head_mask", "load_tile",
    "motion_kernel", "parse_range", "parse_size", "plan_clip", "scan_identities", "simulate",
    "subject_toml", "write_clip", "write_subjects",
]


def simulate(
    images_dir: Path,
    out: Path,
    truth_path: Path,
    cfg: SimConfig,
    *,
    subjects_out: Path | None = None,
    copy: bool = False,
    progress: bool = True,
    enrol_ok: Callable[[Path], bool] | None = None,
) -> Truth:
    """Plan, render and write the clip, the truth file and optionally the subjects folder."""
    plan = plan_clip(images_dir, cfg, enrol_ok=enrol_ok)
    write_clip(plan, out, progress=progress)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    plan.truth.save(truth_path)
    if subjects_out is not None:
        write_subjects(plan.truth, images_dir, subjects_out, copy=copy)
    return plan.truth


def frames_with_faces(truth: Truth) -> Sequence[int]:
    """How many passers-by are in view in each frame (for summaries and tests)."""
    counts = [0] * truth.frames
    for t in truth.tracks:
        for f in range(t.first_frame, t.last_frame + 1):
            counts[f] += 1
    return counts
