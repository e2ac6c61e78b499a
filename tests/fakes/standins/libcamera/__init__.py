"""Stand-in for the ``libcamera`` Python package (python3-libcamera), for tests off the Pi.

The real package is ``from libcamera._libcamera import *``; so is this one. The simulated
hardware is in :mod:`libcamera._sensor`.
"""

from libcamera._libcamera import *  # noqa: F403
from libcamera._libcamera import (  # noqa: F401
    CameraManager,
    ColorSpace,
    Orientation,
    Rectangle,
    Size,
    Transform,
    controls,
    properties,
)
