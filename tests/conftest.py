"""Shared fixtures: the tiny pipeline, Ray with logical GPUs, multi-node clusters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = ("unit", "integration", "multinode", "gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tier is the folder: tests/unit/... gets the `unit` marker, and so on.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion pipeline, saved once per test session."""
    from ray_diffusion.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model", preset="tiny", seed=0)


def _ray_init(resources: dict) -> None:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, **resources)


DEFAULT_RAY_RESOURCES = {"num_cpus": 2, "num_gpus": 4}


@pytest.fixture
def ray_start(request: pytest.FixtureRequest):
    """A fresh local Ray per test; parametrize indirectly with a resources dict."""
    import ray

    resources = getattr(request, "param", None) or DEFAULT_RAY_RESOURCES
    _ray_init(resources)
    try:
        yield resources
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_shared():
    """One local Ray (2 CPUs, 4 logical GPUs) shared by a module's tests."""
    import ray

    _ray_init(DEFAULT_RAY_RESOURCES)
    try:
        yield DEFAULT_RAY_RESOURCES
    finally:
        ray.shutdown()


@pytest.fixture
def ray_cluster(request: pytest.FixtureRequest):
    """A multi-node cluster on one machine: a head without GPUs plus GPU worker nodes.

    Parametrize indirectly with ``{"workers": 2, "gpus": 2}``; yields the Cluster so
    tests can add and remove nodes.
    """
    import ray
    from ray.cluster_utils import Cluster

    spec = {"workers": 2, "gpus": 2, **(getattr(request, "param", None) or {})}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(spec["workers"]):
        cluster.add_node(num_cpus=1, num_gpus=spec["gpus"])
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
