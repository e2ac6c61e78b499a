"""Evaluation: offline measurement.

LFW-format pair lists and the 10-fold protocol, open-set 1:N identification and
calibration, the DET plot, the simulated street (:mod:`edge.evaluation.simulate`), the
stream benchmark (:mod:`edge.evaluation.bench`) and the face_recognition peer.

May import: everything but :mod:`edge.commands`. Nothing on a device imports it.
"""
