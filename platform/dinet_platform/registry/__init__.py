"""The model store over MLflow: the one model-reference resolver (``refs``), versions, aliases
and their provenance (``versions``), optimized versions (``optimized``), and loading any model
reference as an inference engine (``loading``; ``optimizing`` is ``dinet optimize``)."""
