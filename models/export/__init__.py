"""Exports of a model directory to formats other tools run (MONAI Bundle)."""
