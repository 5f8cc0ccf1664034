"""Judging finished image sets: metrics (``metrics``), CLIP/FID backbones (``backbones``), baselines keyed by
what changes a number (``baseline``, ``study``), the checks (``gate``) and the report (``report``)."""
