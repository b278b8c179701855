"""Media primitives shared by preparation, inference and serving (no Ray or MLflow).

``io`` reads and writes video and audio (PyAV), ``landmarks`` finds faces and mouths,
``crops`` is the face-crop geometry over a video, ``audio_features`` the per-frame features.
"""
