"""The MLflow Model Registry: registration, quality gates (``gates``, plain Python),
promotion and rollback (``store``), and the ``dinet registry`` commands (``cli``)."""
