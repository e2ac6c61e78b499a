"""Offline evaluation: LFW-format pair lists, the 10-fold protocol and ROC figures."""
