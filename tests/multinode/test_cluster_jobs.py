"""Batch jobs on a ray.cluster_utils.Cluster: a head without GPUs plus GPU worker nodes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from batch.config import BatchJobConfig
from batch.driver import run_job
from tests.support import assert_outputs_complete
from tests.support import batch_config as job
from tests.support import manifest_rows as rows_of
from tests.support import wait_for_condition


def worker_nodes(cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}


def test_one_actor_per_gpu_spread_over_nodes_identical_to_single_node(ray_cluster, tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"multi-node prompt {i}" for i in range(12)) + "\n")
    common = {"model": str(tiny_model_dir), "steps": 2, "batch_size": 1, "num_threads": 1, "seed": 11}
    report = run_job(job(prompts, tmp_path / "multi", **common), echo=lambda *_: None)
    assert report.exit_code == 0
    summary = report.summary
    assert summary["num_workers"] == 4  # 2 nodes x 2 logical GPUs, none on the GPU-less head
    assert {w["node"] for w in summary["workers"].values()} == worker_nodes(ray_cluster)
    for w in summary["workers"].values():
        assert w["visible_gpus"] is not None and len(w["visible_gpus"].split(",")) == 1
    rows = assert_outputs_complete(tmp_path / "multi", range(12))
    assert {r["node"] for r in rows} <= worker_nodes(ray_cluster)

    single = run_job(job(prompts, tmp_path / "single", num_workers=1, **common), echo=lambda *_: None)
    assert single.exit_code == 0
    assert len({w["node"] for w in single.summary["workers"].values()}) == 1
    images = lambda d: {p.name: p.read_bytes() for p in (tmp_path / d / "images").iterdir()}  # noqa: E731
    assert images("multi") == images("single")


def test_two_gpus_per_worker_places_one_actor_per_node_on_the_device_map_path(ray_cluster, tiny_model_dir, tmp_path):
    import ray

    from batch.driver import ActorFleet

    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\nd\n")
    cfg = job(prompts, tmp_path / "o", model=str(tiny_model_dir), steps=2, gpus_per_worker=2)
    # The job's own fleet, waited on until every worker is up (a job may finish before a
    # slow starter reports, so placement is checked here rather than from the summary).
    fleet = ActorFleet(cfg, ray, echo=lambda *_: None)
    try:
        infos = ray.get([fleet.ready(w) for w in range(len(fleet))], timeout=300)
    finally:
        fleet.close()
    assert len(infos) == 2
    assert {i["node_id"] for i in infos} == worker_nodes(ray_cluster)  # one per node
    for info in infos:
        assert len(info["visible_gpus"].split(",")) == 2  # the actor owns both GPUs of its node
        # no CUDA here: the balanced device map was planned, then fell back to CPU, and said so
        assert info["device"] == "cpu"
        assert any("device_map='balanced' over 2 GPUs" in note for note in info["placement_notes"])

    report = run_job(cfg, echo=lambda *_: None)
    assert report.exit_code == 0 and report.summary["num_workers"] == 2
    assert_outputs_complete(tmp_path / "o", range(4))


def run_in_thread(cfg: BatchJobConfig) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["report"] = run_job(cfg, echo=lambda *_: None)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


@pytest.mark.slow
def test_removing_a_node_mid_job_loses_nothing_and_a_new_node_is_used(ray_cluster, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"p{i}" for i in range(160)) + "\n")
    out = tmp_path / "o"
    cfg = job(prompts, out, model="fake://?latency_s=0.15", batch_size=1, max_worker_restarts=5)
    t, box = run_in_thread(cfg)
    wait_for_condition(lambda: len(rows_of(out)) >= 10, timeout=120, message="job under way")
    victim = ray_cluster.worker_nodes and sorted(ray_cluster.worker_nodes, key=lambda n: n.node_id)[0]
    ray_cluster.remove_node(victim)
    fresh = ray_cluster.add_node(num_cpus=1, num_gpus=2)
    t.join(timeout=300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    report = box["report"]
    assert report.exit_code == 0, report.message
    rows = assert_outputs_complete(out, range(160))
    assert report.summary["worker_restarts"] >= 1
    # the restarted workers landed on the node that joined mid-job and did work there
    assert fresh.node_id in {r["node"] for r in rows}


@pytest.mark.slow
def test_all_workers_gone_exits_nonzero_then_resume_completes(ray_cluster, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"p{i}" for i in range(120)) + "\n")
    out = tmp_path / "o"
    cfg = job(prompts, out, model="fake://?latency_s=0.1", batch_size=1, worker_start_timeout_s=5)
    t, box = run_in_thread(cfg)
    wait_for_condition(lambda: len(rows_of(out)) >= 5, timeout=120, message="job under way")
    for node in list(ray_cluster.worker_nodes):
        ray_cluster.remove_node(node)
    t.join(timeout=300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    report = box["report"]
    assert report.exit_code == 1
    done = {r["index"] for r in rows_of(out)}
    assert 5 <= len(done) < 120
    assert report.missing == sorted(set(range(120)) - done)
    assert "missing item indices" in report.message
    # the manifest is consistent: every row's file is there, and nothing else
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(r["file"]).name for r in rows_of(out))

    ray_cluster.add_node(num_cpus=1, num_gpus=2)
    resumed = run_job(job(prompts, out, model="fake://?latency_s=0.1", batch_size=1, resume=True),
                      echo=lambda *_: None)
    assert resumed.exit_code == 0
    assert resumed.summary["images_generated"] == 120 - len(done)
    assert_outputs_complete(out, range(120))
