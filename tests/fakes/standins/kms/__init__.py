"""Stand-in for the ``kms`` (kmsxx) DRM bindings behind picamera2's DRM preview.

There is no display here: opening a card fails as it does on a headless Pi without
``/dev/dri/card*``. The adapter never starts a DRM preview; picamera2 imports this at load.
"""

from __future__ import annotations

import enum


class PixelFormats(enum.Enum):
    RGB888 = "RG24"
    BGR888 = "BG24"
    XRGB8888 = "XR24"
    XBGR8888 = "XB24"
    YUV420 = "YU12"
    YVU420 = "YV12"


class Card:
    def __init__(self, path: str = "/dev/dri/card0") -> None:
        raise FileNotFoundError(2, "No such file or directory", path)
