"""Evaluation of DINet models on held-out videos, and the sync expert.

Plain PyTorch (no Ray, no MLflow): ``data`` (whole held-out videos from shards), ``metrics``
(image, temporal, sync and mouth-opening metrics), ``sync_expert`` (training and LSE-style
scoring), ``evaluate`` (models + baselines on the same frames), ``report`` (JSON + PNG).
MLflow lives in ``job`` (model resolution, evaluation runs, the sync-expert job) and the CLI in
``cli``.
"""
