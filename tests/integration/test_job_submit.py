"""`ray job submit --working-dir .` against a real head node started on loopback."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import wait_for_condition

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_using(path: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True).stdout
    return [pid for pid in out.split() if int(pid) != os.getpid()]


@pytest.fixture
def ray_head():
    """A head node with 2 logical GPUs, dashboard/job server on 127.0.0.1 only."""
    gcs, dash = free_port(), free_port()
    # Short temp dir: Ray's socket paths must stay under the 107-byte Unix limit.
    temp = tempfile.mkdtemp(prefix="rdh", dir="/tmp")
    # Token auth, as a real cluster runs it: a fresh token that head, CLI and job share.
    token_file = Path(temp) / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", "--num-gpus=2", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"

    def job_server_up() -> bool:
        # Any HTTP answer means it is up; with token auth on (Ray's default) it is a 401.
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                return r.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401

    try:
        wait_for_condition(job_server_up, timeout=120, message="dashboard job server answers")
        yield url, env
    finally:
        # The whole head lives in its own process group; a test cluster needs no graceful drain.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        wait_for_condition(lambda: not _processes_using(temp), timeout=30, message="head processes exited")
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_the_batch_job(ray_head, tiny_model_dir, tmp_path):
    url, env = ray_head
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na boat\na lighthouse\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--",
         "python", "-m", "batch", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--output", str(out),
         "--steps", "2", "--batch-size", "2", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert f"gallery: {out / 'index.html'}" in proc.stdout
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    # joined the submitted-to cluster (2 logical GPUs -> 2 workers), not an embedded one
    assert summary["num_workers"] == 2
