"""The product runtime (plain PyTorch: no Ray, no MLflow).

``engine`` (what every optimized model runs as), ``avatar`` (a face video or photo prepared
for a model), ``blend`` (the feathered paste-back) and ``dub`` (audio + avatar -> frames and
mp4). The CLI, the demo and Serve all run these.
"""
