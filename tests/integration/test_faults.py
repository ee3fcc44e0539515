"""Failures during jobs and serving: killed workers, poison items, dying or unhealthy replicas."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import psutil
import pytest

from batch.driver import run_job
from tests.support import assert_outputs_complete as assert_complete
from tests.support import batch_config as job
from tests.support import manifest_rows as rows_of
from tests.support import wait_for_condition


def processes(pattern: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if pattern in cmd and p.pid != os.getpid():
            found.append(p)
    return found


def test_killing_one_of_four_workers_mid_job_loses_nothing(ray_start, tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(40)) + "\n")
    out = tmp_path / "o"
    cfg = job(prompts, out, model=str(tiny_model_dir), steps=20, batch_size=1, num_workers=4, num_threads=1)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("report", run_job(cfg, echo=lambda *_: None)), daemon=True)
    t.start()
    wait_for_condition(lambda: len(rows_of(out)) >= 4 and len(processes("BatchWorkerActor")) == 4, timeout=180,
                       message="4 workers generating")
    victim = processes("BatchWorkerActor")[0]
    victim.send_signal(signal.SIGKILL)
    t.join(timeout=300)
    assert not t.is_alive()
    report = box["report"]
    assert report.exit_code == 0, report.message
    assert report.summary["worker_restarts"] >= 1
    assert_complete(out, list(range(40)))  # one image and one row each, no temp files


def test_poison_item_is_retried_a_bounded_number_of_times_then_reported(ray_start, tmp_path):
    prompts = tmp_path / "p.txt"
    lines = [f"prompt {i}" for i in range(12)]
    lines[5] = "prompt 5 POISON"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    cfg = job(prompts, out, model="fake://?latency_s=0.01&crash_on=POISON", batch_size=2, num_workers=2,
              max_item_retries=2, max_worker_restarts=10)
    report = run_job(cfg, echo=lambda *_: None)
    assert report.exit_code == 1
    assert [f["index"] for f in report.summary["failed"]] == [5]
    # 2 attempts of its micro-batch, then 1 + 2 retries alone
    assert len(report.summary["failed"][0]["errors"]) == 3
    assert report.missing == [5] and "missing item indices: 5" in report.message
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_indices"] == [5]
    assert_complete(out, [i for i in range(12) if i != 5])


def test_grouped_calls_isolate_a_crashing_item_and_keep_a_failing_items_call_mates(ray_start, tmp_path):
    prompts = tmp_path / "p.txt"
    lines = [f"prompt {i}" for i in range(60)]
    lines[9] = "prompt 9 FAIL"
    lines[45] = "prompt 45 POISON"  # mid-shard of worker 1, when its calls carry ~10 micro-batches
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    # 20 ms micro-batches, 0.2 s calls. No retries: an item charged with its call-mate's
    # crash or error would be reported failed at once.
    cfg = job(prompts, out, model="fake://?latency_s=0.02&crash_on=POISON&fail_on=FAIL", batch_size=1,
              num_workers=2, call_target_s=0.2, max_item_retries=0, max_worker_restarts=10)
    report = run_job(cfg, echo=lambda *_: None)
    s = report.summary
    assert s["worker_calls"] < s["images_generated"]  # calls did carry several micro-batches
    assert report.exit_code == 1
    failed = {f["index"]: f["errors"] for f in s["failed"]}
    assert sorted(failed) == [9, 45]
    assert len(failed[9]) == 1 and "fake backend failure" in failed[9][0]
    assert len(failed[45]) == 1
    # Two crashes: the grouped call (not charged to anyone), then the item alone.
    assert s["worker_restarts"] == 2
    assert_complete(out, [i for i in range(60) if i not in (9, 45)])


# -- Serve ------------------------------------------------------------------------------------
@pytest.fixture
def serve_app_url(ray_start):
    import socket

    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def replica_count(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        return 0
    return status.deployments["DiffusionModel"].replica_states.get("RUNNING", 0)


def post(url: str, prompt: str) -> httpx.Response:
    return httpx.post(url + "/v1/images/generations", json={"prompt": prompt, "num_inference_steps": 2}, timeout=60)


def test_killing_one_of_two_replicas_only_fails_its_requests(serve_app_url):
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app({"model": "fake://?latency_s=1.0", "num_replicas": 2, "gpus_per_replica": 0,
                         "max_batch_size": 1, "max_ongoing_requests": 2}), name="pair", route_prefix="/pair")
    url = serve_app_url + "/pair"
    results: list = [None] * 8

    def fire(i):
        results[i] = post(url, f"in flight {i}")

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_for_condition(lambda: len(processes("ServeReplica:pair:DiffusionModel")) == 2, timeout=30)
    processes("ServeReplica:pair:DiffusionModel")[0].send_signal(signal.SIGKILL)
    for t in threads:
        t.join(timeout=120)
    codes = [r.status_code for r in results]
    assert codes.count(200) >= 2, codes
    assert all(c == 200 or c >= 500 for c in codes), codes  # failures are only the dead replica's 5xx
    wait_for_condition(lambda: replica_count("pair") == 2, timeout=120, message="back to 2 healthy replicas")
    assert [post(url, f"after {i}").status_code for i in range(4)] == [200] * 4
    serve.delete("pair")


def test_a_replica_whose_health_check_fails_is_replaced(serve_app_url):
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app({"model": "fake://?latency_s=0&fail_on=BOOM", "num_replicas": 1, "gpus_per_replica": 0,
                         "max_consecutive_failures": 2, "health_check_period_s": 1, "health_check_timeout_s": 5}),
              name="sick", route_prefix="/sick")
    url = serve_app_url + "/sick"
    handle = serve.get_deployment_handle("DiffusionModel", app_name="sick")
    first = handle.describe.remote().result()["worker_id"]
    assert [post(url, "BOOM").status_code for _ in range(2)] == [500, 500]

    def replaced():
        try:
            return handle.describe.remote().result(timeout_s=5)["worker_id"] != first
        except Exception:
            return False

    wait_for_condition(replaced, timeout=120, message="unhealthy replica replaced")
    assert post(url, "fine").status_code == 200
    serve.delete("sick")
