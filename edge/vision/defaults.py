"""The pipeline's default models, by name (no imports: the command line reads these
for its defaults without loading numpy or a model).

The embedder is SFace (OpenCV Zoo, Apache-2.0) as full-integer int8 since issue 20: on
the developers' LFW half and on the degraded simulated street it finds far more watchlisted
faces than dlib's ResNet at the same false-alert rate (models/README.md). dlib stays
selectable (``[recognition] embedder = "dlib_resnet_v1"``, ``--embedder dlib_resnet_v1``).
"""

from __future__ import annotations

DEFAULT_EMBEDDER = "sface_2021dec"
DEFAULT_PRECISION = "int8"
DLIB_EMBEDDER = "dlib_resnet_v1"
