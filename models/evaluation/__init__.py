"""Segmentation quality: per-organ Dice, HD95 and surface Dice (NSD), the BTCV averaging, reports."""
