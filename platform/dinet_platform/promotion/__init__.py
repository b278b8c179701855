"""Promotion: registering trained models (evaluated) and moving ``staging`` / ``production``
only through the quality gates (``gates``, plain Python; ``workflow``)."""
