"""Finetuning: an ASA-pretrained Swin UNETR becomes a multi-organ segmentation model directory.

``config`` (presets, overrides) → ``labels`` (label set, id maps) → ``data`` (split, cache, crops) →
``transfer`` (teacher weights in, with a report) → ``trainer`` (the loop) → ``evaluate`` (Dice);
``commands`` is the ``asa finetune`` CLI.
"""
