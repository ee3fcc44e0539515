"""`python -m serve_app --model DIR`, the README's one-line way to serve locally."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import wait_for_condition

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_python_m_serve_app_serves_until_interrupted(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve_app", "--model", str(tiny_model_dir), "--port", str(port),
         "--set", "gpus_per_replica=0", "--set", "num_threads=1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # The app is up once it prints where it serves (serve.run has returned by then).
        wait_for_condition(lambda: any(f"at http://127.0.0.1:{port}/" in x for x in lines) or proc.poll() is not None,
                           timeout=180, message="serve_app prints its URL")

        def healthy():
            try:
                return httpx.get(url + "/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # stop waiting if it died
        wait_for_condition(healthy, timeout=180, message="serve_app answers /healthz")
        assert proc.poll() is None, "".join(lines)
        r = httpx.post(url + "/v1/images/generations", json={"prompt": "x", "num_inference_steps": 2, "seed": 1},
                       timeout=60)
        assert r.status_code == 200 and r.json()["seeds"] == [1]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    reader.join(timeout=30)
    assert proc.returncode == 0, "".join(lines)[-2000:]  # Ctrl-C is a clean stop


def test_bad_set_argument_exits_2(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "serve_app", "--model", str(tiny_model_dir), "--set", "max_n=0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "max_n" in proc.stderr
