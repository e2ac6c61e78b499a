"""``edge watchlist build|inspect|end-command|hold-command``.

- ``build``: enrol subject folders (same FaceEngine + QualityGate as the device) into a
  signed, encrypted, expiring bundle for the given recipient devices.
- ``inspect``: verify and summarise a bundle; never prints an embedding.
- ``end-command`` / ``hold-command``: signed commands for a device (end a deployment,
  put alerts on legal hold), e.g. for Ansible's end-deployment playbook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.watchlist.bundle import Subject
    from edge.watchlist.references import Reference

from edge.vision.defaults import DEFAULT_EMBEDDER, DLIB_EMBEDDER


def register(sub: Any) -> None:
    p = sub.add_parser("watchlist", help="build and inspect watchlist bundles; signed commands")
    wsub = p.add_subparsers(dest="watchlist_command", metavar="ACTION")
    wsub.required = True

    b = wsub.add_parser(
        "build",
        help="enrol subject images into a signed, encrypted bundle",
        description="Enrol SUBJECTS/<id>/{subject.toml,images} with the device's face engine "
        "and quality gate, then sign and encrypt the watchlist for the recipient devices. "
        "Each image gets a verdict; a subject with no usable image fails the build unless "
        "--skip-bad.",
    )
    b.add_argument("--subjects", type=Path, required=True, help="folder of subject folders")
    b.add_argument("--deployment", type=Path, required=True, help="deployment.toml")
    b.add_argument("--signing-key", type=Path, required=True, help="control-room signing.key")
    b.add_argument(
        "--recipients", type=Path, nargs="+", required=True, metavar="PUB",
        help="each device's deployment public key, as DEVICE_ID=FILE.pub (made on the device "
        "by edge keys deployment-key), or a file named <device_id>.pub",
    )
    b.add_argument("--out", type=Path, required=True, help="bundle file to write")
    b.add_argument("--skip-bad", action="store_true",
                   help="leave out subjects with no usable image (listed) instead of failing")
    b.add_argument("--models", type=Path, default=None, help="models directory")
    b.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help=f"embedder name; must be the one the devices run ([recognition] "
                   f"embedder; default {DEFAULT_EMBEDDER}, dlib: {DLIB_EMBEDDER})")
    b.add_argument("--model", choices=("int8", "float32"), default="int8",
                   help="embedder precision; must be the one the devices run")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    b.add_argument("--console-pub", type=Path, default=None, metavar="PUB",
                   help="the console's public key (edge keys init --device console): also "
                   "write the subjects' enrolled images for the console, encrypted to it")
    b.add_argument("--references-out", type=Path, default=None, metavar="FILE",
                   help="where the console's reference file goes (default: OUT with .refs)")
    b.add_argument("--reference", choices=("fused", "best"), default=None,
                   help="how the device scores a subject with several images: its best "
                   "image or their fusion, as a track template (default: the measured "
                   "better, docs/design.md); calibrate the threshold for the same mode")
    b.set_defaults(func=run_build)

    i = wsub.add_parser("inspect", help="verify and summarise a bundle")
    i.add_argument("file", type=Path)
    i.add_argument("--signer-pub", type=Path, help="control-room signing.pub to verify against")
    i.add_argument("--device-key", type=Path, help="a recipient's private key (shows subject ids)")
    i.add_argument("--device", help="that recipient's device id (default: key file name)")
    i.add_argument("--json", action="store_true", help="JSON output")
    i.set_defaults(func=run_inspect)

    for name, helptext in (
        ("end-command", "make a signed end-deployment command file"),
        ("hold-command", "make a signed legal-hold command file"),
    ):
        c = wsub.add_parser(name, help=helptext)
        c.add_argument("--signing-key", type=Path, required=True, help="control-room signing.key")
        c.add_argument("--device", required=True, help="device id")
        c.add_argument("--deployment", required=True, help="deployment id")
        c.add_argument("--out", type=Path, required=True, help="command file to write")
        c.add_argument("--valid-for", type=int, default=3600, metavar="SECONDS",
                       help="validity from now (default 3600, at most 86400)")
        if name == "end-command":
            c.add_argument("--reason", default="", help="short reason, recorded in the audit log")
            c.set_defaults(func=run_end_command)
        else:
            c.add_argument("--alert", action="append", required=True, metavar="ALERT_ID",
                           help="alert id (repeatable)")
            c.add_argument("--off", action="store_true", help="lift the hold instead")
            c.set_defaults(func=run_hold_command)


# --- build -------------------------------------------------------------------------------


def _engine(
    models: Path | None, precision: str, embedder: str = DEFAULT_EMBEDDER
) -> tuple[Any, Any, Any]:
    """The device's face engine, quality gate and embedder description."""
    from edge.vision.faces import FaceEngine
    from edge.vision.quality import QualityGate
    from edge.watchlist.enrol import embedder_info

    engine = FaceEngine.from_models(
        models, embedder=embedder, precision="int8" if precision == "int8" else "float32"
    )
    return engine, QualityGate(), embedder_info(engine, models)


def _recipient(arg: Path) -> tuple[str, Any]:
    """``DEVICE_ID=FILE.pub`` (a deployment key fetched from the device) or ``ID.pub``."""
    from edge.watchlist.keys import check_device_id, load_deployment_public, load_device_public

    text = str(arg)
    name, sep, path = text.partition("=")
    if sep and "/" not in name:
        return check_device_id(name), load_deployment_public(Path(path))
    return load_device_public(arg)


def _reference(subject: Subject, images: list[bytes]) -> Reference:
    """A subject's entry in the console's reference file: every image, its provenance."""
    from edge.watchlist.references import Reference

    first, *more = images or [b""]
    return Reference(subject.subject_id, subject.category, first, tuple(more),
                     source=subject.source, capture_date=subject.capture_date)


def run_build(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.progress import Progress
    from edge.recognition.match import DEFAULT_REFERENCE
    from edge.watchlist.bundle import build_bundle
    from edge.watchlist.enrol import (
        demographics_warning,
        describe_spec,
        enrol,
        images_in,
        load_deployment,
        load_subjects,
    )
    from edge.watchlist.keys import load_device_public, load_signing_key, write_atomic

    spec = load_deployment(args.deployment)
    signing_key = load_signing_key(args.signing_key)
    recipients = [_recipient(p) for p in args.recipients]
    ids = [r[0] for r in recipients]
    if len(set(ids)) != len(ids):
        raise UsageError("a recipient device is named twice")
    total = sum(len(images_in(f)) for f, _ in load_subjects(args.subjects))  # before models
    console_pub = load_device_public(args.console_pub)[1] if args.console_pub else None
    if args.references_out is not None and console_pub is None:
        raise UsageError("--references-out needs --console-pub")
    engine, gate, info = _engine(args.models, args.model, args.embedder)
    with Progress(total, "enrolling", enabled=not args.no_progress) as bar:
        report = enrol(args.subjects, engine, gate, info.metric, progress=bar.advance)
    for line in report.lines():
        print(line)
    if report.failed and not args.skip_bad:
        names = ", ".join(sid for sid, _ in report.failed)
        raise UsageError(
            f"{len(report.failed)} subject(s) have no usable image: {names} "
            "(fix them, or use --skip-bad to leave them out)"
        )
    if report.failed:
        print(f"left out (--skip-bad): {', '.join(sid for sid, _ in report.failed)}")
    if not report.subjects:
        raise UsageError("no subject could be enrolled; no bundle written")
    warning = demographics_warning(info, args.models, spec.threshold)
    if warning is not None:
        print(warning)
    import uuid

    bundle_id = uuid.uuid4().hex
    data = build_bundle(
        spec,
        report.subjects,
        report.embeddings,
        info,
        signing_key,
        recipients,
        thumbnails=report.thumbnails,
        bundle_id=bundle_id,
        reference=args.reference or DEFAULT_REFERENCE,
    )
    report.embeddings.fill(0.0)
    write_atomic(args.out, data, 0o600, force=True)
    if console_pub is not None:
        from edge.watchlist.references import build_references

        refs_out = args.references_out or args.out.with_suffix(".refs")
        refs = build_references(
            signing_key, console_pub, deployment_id=spec.deployment_id, bundle_id=bundle_id,
            window_end=spec.end.timestamp(),
            subjects=[_reference(s, report.reference_images.get(s.subject_id, []))
                      for s in report.subjects],
        )  # fmt: skip
        write_atomic(refs_out, refs, 0o600, force=True)
        print(f"wrote {refs_out}: reference images of {len(report.subjects)} subjects for the "
              "console")
    print(
        f"wrote {args.out}: {len(report.subjects)} subjects for {', '.join(ids)}; "
        f"{describe_spec(spec)}"
    )
    return 0


# --- inspect -----------------------------------------------------------------------------


def run_inspect(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.watchlist.bundle import bundle_digest, format_time, inspect_bundle
    from edge.watchlist.keys import load_device_key, load_signer_public

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    signers = [load_signer_public(args.signer_pub)] if args.signer_pub else None
    device = None
    if args.device_key is not None:
        dev_id = args.device or args.device_key.name.removesuffix(".key")
        device = (dev_id, load_device_key(args.device_key))
    elif args.device is not None:
        raise UsageError("--device needs --device-key")
    ins = inspect_bundle(data, signers, device)
    h = ins.header
    doc: dict[str, Any] = {
        "file": str(args.file),
        "bytes": len(data),
        "sha256": bundle_digest(data),
        "signer_key_id": ins.signer_key_id,
        "signature": ins.signature,
        "header": h.public_summary(),
    }
    if ins.subjects is not None:
        doc["subjects"] = [
            {"id": s.subject_id, "category": s.category, "images_used": s.images_used,
             "references": s.references}
            for s in ins.subjects
        ]
        doc["reference"] = ins.reference
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    cats = ", ".join(f"{k} {v}" for k, v in sorted(h.categories.items())) or "none"
    e = h.embedder
    lines = [
        f"bundle {args.file} ({len(data)} bytes, sha256 {doc['sha256'][:16]}...)",
        f"signature: {ins.signature} (signer key id {ins.signer_key_id[:16]}...)",
        f"bundle id {h.bundle_id}, format {h.format}, created {format_time(h.created_at)}",
        f"deployment {h.deployment_id} at {h.location}",
        f"window {format_time(h.start)} to {format_time(h.end)} (UTC)",
        f"authorised by {h.authorising_officer} at {format_time(h.approved_at)}; "
        f"signage confirmed: {'yes' if h.signage_confirmed else 'NO'}",
        f"threshold {h.threshold:.3f} (similarity), sequence {h.sequence}, "
        f"max watchlist size {h.max_watchlist_size}",
        f"embedder {e.name} ({e.family}, {e.metric}, dim {e.dim}, sha256 {e.sha256[:16]}...)",
        f"devices: {', '.join(h.device_ids)}",
        f"subjects: {h.subject_count} ({cats})",
    ]
    if ins.subjects is not None:
        lines.append(f"a subject with several references is scored by its {ins.reference} "
                     "reference")
        lines += [f"  {s.subject_id} ({s.category}): {s.references} "
                  f"reference{'s' if s.references != 1 else ''}" for s in ins.subjects]
    print("\n".join(lines))
    return 0


# --- signed commands ---------------------------------------------------------------------


def _write_command(args: argparse.Namespace, command: str, cmd_args: dict[str, Any]) -> int:
    from edge.errors import UsageError
    from edge.watchlist.keys import load_signing_key, write_atomic
    from edge.watchlist.signed_commands import make_command

    key = load_signing_key(args.signing_key)
    try:
        data = make_command(key, command, args.device, args.deployment, cmd_args,
                            valid_for_s=args.valid_for)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    write_atomic(args.out, data, 0o600, force=True)
    print(f"wrote {args.out}: signed {command} for device {args.device}, deployment "
          f"{args.deployment}, valid {args.valid_for} s")
    return 0


def run_end_command(args: argparse.Namespace) -> int:
    return _write_command(args, "end_deployment", {"reason": args.reason} if args.reason else {})


def run_hold_command(args: argparse.Namespace) -> int:
    return _write_command(args, "legal_hold", {"alert_ids": args.alert, "on": not args.off})
