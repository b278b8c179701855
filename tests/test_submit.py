"""`dinet train --address`: what travels with each stage's Ray Job (the submission itself runs
on a real two-node token-auth cluster in tests/test_multinode.py)."""

from __future__ import annotations

import pytest


@pytest.mark.unit
def test_a_local_tracking_store_is_forwarded_with_a_warning_and_a_server_without():
    from dinet_platform.training.submit import job_environment
    from rich.console import Console

    for uri, warned in [("sqlite:////tmp/mlflow.db", True), ("http://head:5000", False)]:
        console = Console(record=True, width=300)
        env = job_environment({"MLFLOW_TRACKING_URI": uri, "DINET_HOME": "/shared/dinet",
                               "UNRELATED": "x"}, console)
        assert env == {"MLFLOW_TRACKING_URI": uri, "DINET_HOME": "/shared/dinet"}
        assert ("is a local store" in console.export_text()) is warned
