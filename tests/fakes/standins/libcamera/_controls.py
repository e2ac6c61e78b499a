"""libcamera's control and property ids, their types and enums (``libcamera.controls``,
``libcamera.properties``), as the bindings expose them: ``ControlId`` objects with ``name``,
``id`` and ``type``, and ``IntEnum`` classes such as ``controls.AfModeEnum``."""

from __future__ import annotations

import enum
from types import SimpleNamespace
from typing import Any


class ControlType(enum.Enum):
    None_ = 0
    Bool = 1
    Byte = 2
    Integer32 = 3
    Integer64 = 4
    Float = 5
    String = 6
    Rectangle = 7
    Size = 8


class ControlId:
    def __init__(self, num: int, name: str, type_: ControlType) -> None:
        self.id, self.name, self.type = num, name, type_

    def __repr__(self) -> str:
        return f"libcamera.ControlId({self.id}, {self.name})"


class ControlInfo:
    def __init__(self, minimum: Any, maximum: Any, default: Any) -> None:
        self.min, self.max, self.default = minimum, maximum, default


def _enum(name: str, **members: int) -> type[enum.IntEnum]:
    return enum.IntEnum(name, members)  # type: ignore[return-value]


_T = ControlType
_CONTROL_TYPES = {
    "AeEnable": _T.Bool, "AeMeteringMode": _T.Integer32, "AeConstraintMode": _T.Integer32,
    "AeExposureMode": _T.Integer32, "ExposureValue": _T.Float, "ExposureTime": _T.Integer32,
    "ExposureTimeMode": _T.Integer32, "AnalogueGain": _T.Float, "AnalogueGainMode": _T.Integer32,
    "Brightness": _T.Float, "Contrast": _T.Float, "Saturation": _T.Float, "Sharpness": _T.Float,
    "AwbEnable": _T.Bool, "AwbMode": _T.Integer32, "ColourGains": _T.Float,
    "ScalerCrop": _T.Rectangle, "FrameDurationLimits": _T.Integer64,
    "NoiseReductionMode": _T.Integer32, "AfMode": _T.Integer32, "AfRange": _T.Integer32,
    "AfSpeed": _T.Integer32, "AfTrigger": _T.Integer32, "AfMetering": _T.Integer32,
    "AfWindows": _T.Rectangle, "AfPause": _T.Integer32, "LensPosition": _T.Float,
    # metadata only
    "SensorTimestamp": _T.Integer64, "FrameDuration": _T.Integer64, "AfState": _T.Integer32,
    "DigitalGain": _T.Float, "Lux": _T.Float, "SensorTemperature": _T.Float,
}
CONTROL_IDS: dict[str, ControlId] = {
    name: ControlId(i + 1, name, t) for i, (name, t) in enumerate(_CONTROL_TYPES.items())
}
controls = SimpleNamespace(
    **CONTROL_IDS,
    AeExposureModeEnum=_enum("AeExposureModeEnum", Normal=0, Short=1, Long=2, Custom=3),
    AfModeEnum=_enum("AfModeEnum", Manual=0, Auto=1, Continuous=2),
    AfRangeEnum=_enum("AfRangeEnum", Normal=0, Macro=1, Full=2),
    AfSpeedEnum=_enum("AfSpeedEnum", Normal=0, Fast=1),
    AfTriggerEnum=_enum("AfTriggerEnum", Start=0, Cancel=1),
    AfStateEnum=_enum("AfStateEnum", Idle=0, Scanning=1, Focused=2, Failed=3),
    draft=SimpleNamespace(
        NoiseReductionModeEnum=_enum(
            "NoiseReductionModeEnum", Off=0, Fast=1, HighQuality=2, Minimal=3, ZSL=4
        )
    ),
)
_PROPERTY_IDS = {
    name: ControlId(100 + i, name, t)
    for i, (name, t) in enumerate(
        [("Model", _T.String), ("Location", _T.Integer32), ("Rotation", _T.Integer32),
         ("PixelArraySize", _T.Size), ("PixelArrayActiveAreas", _T.Rectangle),
         ("ColorFilterArrangement", _T.Integer32), ("UnitCellSize", _T.Size)]
    )
}
properties = SimpleNamespace(
    **_PROPERTY_IDS,
    draft=SimpleNamespace(
        ColorFilterArrangementEnum=_enum("ColorFilterArrangementEnum", RGGB=0, GRBG=1, GBRG=2,
                                         BGGR=3, RGB=4, MONO=5)
    ),
)
