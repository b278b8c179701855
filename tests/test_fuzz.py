"""Property-based fuzzing of the HTTP API (schemathesis) against the session's real Serve app:
requests generated from the OpenAPI document -- every route, every multipart field, JSON
schema and raw body it describes -- with and without the token. No answer may be a 5xx or
disagree with the document. ``bench/fuzz.py`` runs the long version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from dinet_platform.serving import api

from tests.support import SERVE_TOKEN, auth, upload

EXAMPLES_PER_OPERATION = 25


def schemathesis_run(url: str, report: Path, examples: int, *, token: bool = True,
                     seed: int = 0, ids: dict[str, str] | None = None
                     ) -> subprocess.CompletedProcess:
    """``st run`` against the app at ``url``; ``ids`` fills path parameters (an avatar and a
    job that exist, so the fuzzer reaches the parsers behind them)."""
    config = report.with_suffix(".toml")
    config.write_text("[parameters]\n" + "".join(
        f'"path.{name}" = "{value}"\n' for name, value in (ids or {}).items()))
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
               f"{url}/openapi.json",
               "--url", url, "--checks", "not_a_server_error,response_schema_conformance,"
               "content_type_conformance,status_code_conformance",
               "--max-examples", str(examples), "--seed", str(seed), "--workers", "2",
               "--request-timeout", "60", "--suppress-health-check", "all",
               "--phases", "examples,coverage,fuzzing", "--no-color",
               "--report", "junit", "--report-junit-path", str(report)]
    if token:
        command += ["--header", f"Authorization: Bearer {SERVE_TOKEN}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})


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
    for token in (True, False):
        result = schemathesis_run(served["url"], tmp_path / f"junit-{token}.xml",
                                  EXAMPLES_PER_OPERATION, token=token, ids=ids)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert http.get("/v1/model", headers=auth()).status_code == 200  # still serving
