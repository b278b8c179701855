"""Property-based fuzzing of the HTTP API (schemathesis) against the session's real Serve app:
requests generated from the OpenAPI document -- every route, every multipart field, JSON
schema and raw body it describes -- with and without the token. No answer may be a 5xx or
disagree with the document. ``bench/fuzz.py`` runs the long version."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from dinet_platform.serving import api

from tests.support import SERVE_TOKEN, auth, schemathesis_run, upload

EXAMPLES_PER_OPERATION = 15


@pytest.mark.serve
def test_the_openapi_document_describes_every_request_body(served):
    spec = httpx.get(served["url"] + "/openapi.json").json()
    bodies = {(path, method): op.get("requestBody", {}).get("content", {})
              for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(bodies["/v1/avatars", "post"]) == {"multipart/form-data", "video/mp4"}
    assert set(bodies["/v1/avatars/{avatar_id}/frames", "post"]) == {"application/json",
                                                                      "audio/wav"}
    assert set(bodies["/v1/dub", "post"]) == {"multipart/form-data"}
    dub = bodies["/v1/dub", "post"]["multipart/form-data"]["schema"]["properties"]
    assert {"audio", "avatar_id", "video", "landmarks", "audio_features"} <= set(dub)


@pytest.mark.serve
def test_fuzzed_requests_never_get_a_server_error(served, http, synth_dir, tmp_path):
    video = sorted(synth_dir.glob("*.mp4"))[1]
    own = upload(http, video, video.with_suffix(".csv"))  # the fuzzer may delete it
    assert own.status_code == 201, own.text
    job = http.post("/v1/dub", data={"avatar_id": own.json()["avatar_id"]},
                    files={"audio": ("a.wav", api.pcm_wav(np.zeros(8000), 16000))})
    assert job.status_code == 202, job.text
    ids = {"avatar_id": own.json()["avatar_id"], "job_id": job.json()["job_id"]}
    # with the token, the DELETEs last (they remove the avatar and job the others need)
    for token, methods in ((SERVE_TOKEN, "no-delete"), (SERVE_TOKEN, "delete"), (None, "all")):
        result = schemathesis_run(served["url"], tmp_path / f"{methods}-{bool(token)}",
                                  EXAMPLES_PER_OPERATION, token, ids=ids, methods=methods)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert http.get("/v1/model", headers=auth()).status_code == 200  # still serving
