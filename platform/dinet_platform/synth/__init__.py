"""Synthetic talking faces with exact ground truth (plain NumPy/PyTorch, no Ray or MLflow).

``videos`` writes whole clips (mp4 + per-frame landmarks and mouth openings) and datasets of
them; ``face`` draws the face, ``render`` its mouth, ``audio`` the formant syllables and the
coarticulated mouth track, ``speech`` real sentences spoken by espeak-ng.
"""
