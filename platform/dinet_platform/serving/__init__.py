"""Serving the lip-sync model over HTTP (Ray Serve at the edge: ``deployment``).

Modules: ``settings`` (the typed app config read from a Ray Serve config file), ``auth``
(bearer tokens), ``api`` (request parsing and validation: every refusal names its field),
``avatars`` (avatar storage on disk and the per-replica feature cache), ``model`` (the model
side of a replica: loading through the inference toolkit, hot swap, batched generation),
``app`` (the FastAPI routes), ``deployment`` (the Ray Serve application: the model replica
and the ingress, ``build_app``), ``dub_jobs`` (offline dubbing as polled jobs), ``local``
(running the app on this process's Ray), ``client`` (a small Python client).
"""
