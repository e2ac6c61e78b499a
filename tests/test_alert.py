"""Alert JSON, the face crop (safeguard 11), UUIDv7 ids and adjudication parsing."""

from __future__ import annotations

import base64
import json
import time
import uuid

import cv2
import jsonschema
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.delivery.alert import (
    AlertFormatError,
    build_alert,
    check_face_only,
    crop_region,
    encode_alert,
    face_crop_jpeg,
    jpeg_size,
    make_adjudication,
    parse_adjudication,
    parse_alert,
    parse_rfc3339,
    rfc3339,
    stamp_published_at,
)
from edge.delivery.alert_sign import seal_alert
from edge.uuid7 import uuid7, uuid7_str, uuid7_unix_ms
from tests.fixtures.alerts import FACE_BOX, SCHEMA_PATH, make_record, synthetic_frame

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


# --- UUIDv7 ----------------------------------------------------------------------------------


def test_uuid7_layout_and_time() -> None:
    before = int(time.time() * 1000)
    u = uuid7()
    after = int(time.time() * 1000)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert before <= uuid7_unix_ms(u) <= after


def test_uuid7_fixed_time_encodes_that_time() -> None:
    # A time far from the last id's is encoded exactly (a big clock step is followed).
    t = time.time() - 3600
    assert uuid7_unix_ms(uuid7(now_s=t)) == int(t * 1000)


def test_uuid7_monotonic_and_unique_within_a_millisecond() -> None:
    ids = [uuid7_str() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # lexical order == creation order
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_uuid7_rejects_other_versions() -> None:
    with pytest.raises(ValueError):
        uuid7_unix_ms(uuid.uuid4())


# --- the crop --------------------------------------------------------------------------------


def test_crop_is_the_face_only_not_the_frame() -> None:
    frame = synthetic_frame()
    jpeg = face_crop_jpeg(frame, FACE_BOX, margin=0.2)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = crop_region(FACE_BOX, (1280, 720), 0.2)
    assert (w, h) == (140, 168)  # 100x120 box + 20 % each side
    assert decoded.shape[:2] == (h, w)
    assert decoded.shape[:2] != frame.shape[:2]
    assert jpeg_size(jpeg) == (w, h)
    # The pixels are the face region's (JPEG is lossy: compare means).
    region = frame[y : y + h, x : x + w].astype(np.float32)
    assert abs(float(decoded.astype(np.float32).mean()) - float(region.mean())) < 3.0


def test_large_face_is_downscaled_and_clipped_at_the_edge() -> None:
    frame = synthetic_frame()
    box = (900.0, 100.0, 1300.0, 700.0)  # runs off the right edge
    jpeg = face_crop_jpeg(frame, box, margin=0.2, max_side=320)
    w, h = jpeg_size(jpeg)
    assert max(w, h) == 320
    cx, cy, cw, ch = crop_region(box, (1280, 720), 0.2)
    assert cx + cw == 1280 and cy == 0 and cy + ch == 720
    assert abs(w / h - cw / ch) < 0.02


def test_alert_refuses_a_whole_frame_as_crop() -> None:
    frame = synthetic_frame()
    ok, buf = cv2.imencode(".jpg", frame)
    assert ok
    record = make_record()
    with pytest.raises(AlertFormatError, match="matched face only"):
        check_face_only(buf.tobytes(), record.bbox)
    from dataclasses import replace

    with pytest.raises(AlertFormatError, match="matched face only"):
        build_alert(replace(record, face_jpeg=buf.tobytes()))
    with pytest.raises(AlertFormatError, match="JPEG"):
        build_alert(replace(record, face_jpeg=b"\x89PNG not a jpeg"))


# --- alert JSON ------------------------------------------------------------------------------


def test_alert_json_matches_schema_and_record(validator: jsonschema.Draft202012Validator) -> None:
    record = make_record(score=0.71234567, threshold=0.6)
    published = record.captured_at + 0.25
    payload = seal_alert(encode_alert(record), published, KEY)
    assert payload == seal_alert(encode_alert(record, published_at=published), 0.0, KEY)
    obj = json.loads(payload)
    validator.validate(obj)
    assert set(obj) == {
        "schema", "alert_id", "device_id", "deployment_id", "captured_at", "published_at",
        "subject_id", "category", "score", "threshold", "track_id", "bbox", "face_jpeg_b64",
        "model", "signature",
    }  # fmt: skip
    assert obj["schema"] == "lfr.alert/1"
    assert obj["alert_id"] == record.alert_id
    assert abs(parse_rfc3339(obj["captured_at"]) - record.captured_at) < 0.001
    assert abs(parse_rfc3339(obj["published_at"]) - published) < 0.001
    assert obj["bbox"] == dict(zip("xywh", record.bbox, strict=True))
    assert base64.b64decode(obj["face_jpeg_b64"]) == record.face_jpeg
    assert obj["model"]["embedder"] == {"name": "dlib_resnet_int8", "sha256": "b" * 64}
    assert obj["score"] == pytest.approx(0.712346)
    assert parse_alert(payload)["alert_id"] == record.alert_id


def test_published_at_is_stamped_once_and_deterministically(
    validator: jsonschema.Draft202012Validator,
) -> None:
    record = make_record()
    queued = encode_alert(record)
    assert json.loads(queued)["published_at"] is None
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(json.loads(queued))  # not publishable until stamped
    at = time.time()
    first = stamp_published_at(queued, at)
    assert first == stamp_published_at(queued, at)  # byte-identical on redelivery
    assert first == encode_alert(record, published_at=at)
    with pytest.raises(jsonschema.ValidationError, match="signature"):
        validator.validate(json.loads(first))  # stamped, not yet signed
    validator.validate(json.loads(seal_alert(queued, at, KEY)))
    assert stamp_published_at(first, at + 10) == first  # never re-stamped
    assert stamp_published_at(b'{"x":1}', at) == b'{"x":1}'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"category": "shoplifter"}, "category"),
        ({"score": 0.55, "threshold": 0.6}, "below the threshold"),
        ({"score": float("nan")}, "score"),
        ({"alert_id": str(uuid.uuid4())}, "UUIDv7"),
        ({"device_id": "dev/a"}, "device_id"),
        ({"model": {"detector": "d", "embedder": "e"}}, "sha256"),
        ({"bbox": (0, 0, 0, 10)}, "bbox"),
    ],
)
def test_build_alert_refuses_bad_records(change: dict[str, object], message: str) -> None:
    from dataclasses import replace

    with pytest.raises(AlertFormatError, match=message):
        build_alert(replace(make_record(), **change))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("alert_id"),
        lambda o: o.update(category="other"),
        lambda o: o.update(extra=1),
        lambda o: o.update(captured_at="2026-11-22 11:00:00"),
        lambda o: o["bbox"].update(w=0),
        lambda o: o.update(face_jpeg_b64=base64.b64encode(b"GIF89a").decode()),
    ],
)
def test_schema_and_parser_both_reject_malformed_alerts(
    validator: jsonschema.Draft202012Validator, mutate: object
) -> None:
    obj = json.loads(seal_alert(encode_alert(make_record()), time.time(), KEY))
    assert validator.is_valid(obj)
    mutate(obj)  # type: ignore[operator]
    assert not validator.is_valid(obj)
    with pytest.raises(AlertFormatError):
        parse_alert(json.dumps(obj).encode())


def test_rfc3339_round_trip() -> None:
    t = 1_795_347_179.123
    s = rfc3339(t)
    assert s.endswith("Z") and "T" in s
    assert parse_rfc3339(s) == pytest.approx(t, abs=0.001)
    with pytest.raises(AlertFormatError):
        parse_rfc3339("2026-11-22T11:00:00+01:00")


# --- adjudications ---------------------------------------------------------------------------


def test_adjudication_round_trip_and_refusals() -> None:
    aid = uuid7_str()
    adj = make_adjudication(aid, "confirmed", "PC1234", time.time())
    assert set(adj) == {"alert_id", "decision", "officer", "at"}
    assert parse_adjudication(json.dumps(adj).encode()) == adj
    for bad in (
        {**adj, "decision": "arrest"},
        {**adj, "officer": " "},
        {**adj, "alert_id": "nope"},
        {**adj, "extra": True},
        {k: v for k, v in adj.items() if k != "at"},
    ):
        with pytest.raises(AlertFormatError):
            parse_adjudication(json.dumps(bad).encode())
    with pytest.raises(AlertFormatError):
        parse_adjudication(b"not json")
    with pytest.raises(AlertFormatError):
        parse_adjudication(b"[1, 2]")
