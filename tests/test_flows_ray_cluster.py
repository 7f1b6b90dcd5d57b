"""A flow on a two-node Ray cluster on loopback: its tasks run on both nodes and its output
is byte for byte the output of a run on a local Ray.

The cluster is made with Ray's own utilities (ray.cluster_utils.Cluster: a head node and a
worker node, one CPU each, on 127.0.0.1, in a private Ray temp dir) and stopped with its
API. The stage connects to it as a separate driver process through SEMLIC_RAY_ADDRESS, as a
deployment would connect to a real cluster.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.test_flows_support import make_project, prepare_synthetic, run_stage, stage_env, tree_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PARAMS = {
    "base": {"workers": 2},
    "code": {"limit": 4, "shard_size": 1, "methods": None,
             "baselines": {"codecs": ["jpeg", "webp"], "sweep": {"jpeg": [40, 70, 90], "webp": [40, 70, 90]}}},
}


@pytest.fixture
def two_node_cluster(monkeypatch):
    """Head + one worker node on 127.0.0.1 with one CPU and a named resource each."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    os.makedirs(os.path.join(ray_tmp, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)             # keeps this cluster out of /tmp/ray (others' ray.init)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # node addresses on loopback
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=1, resources={"node_head": 1}, include_dashboard=False,
                         node_ip_address="127.0.0.1", temp_dir=ray_tmp)
        cluster.add_node(num_cpus=1, resources={"node_worker": 1}, node_ip_address="127.0.0.1", temp_dir=ray_tmp)
        cluster.wait_for_nodes()
        yield cluster, ray_tmp
    finally:
        cluster.shutdown()  # Ray's API: kills the processes of both nodes
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_code_stage_on_two_nodes_matches_local_run(tmp_path, two_node_cluster):
    cluster, ray_tmp = two_node_cluster
    node_ids = {node.node_id for node in cluster.list_all_nodes()}
    assert len(node_ids) == 2

    local = make_project(tmp_path / "local", PARAMS)
    prepare_synthetic(local, limit=4)
    remote = make_project(tmp_path / "cluster", PARAMS)
    shutil.copytree(local / "data", remote / "data")

    run_stage("code", local, stage_env(local))
    record = run_stage("code", remote, stage_env(remote, SEMLIC_RAY_ADDRESS=cluster.address, RAY_TMPDIR=ray_tmp,
                                                 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))

    shards = record["result"]["shards"]
    assert len(shards) == 4
    assert {shard["node"] for shard in shards} == node_ids, "the shards did not run on both nodes"
    apis = {shard["prefect_api"] for shard in shards}  # one server for the stage, none per worker
    assert len(apis) == 1 and apis.pop().startswith("http://127.0.0.1:")
    local_out = tree_bytes(local / "data" / "coded", exclude=("timings.parquet",))
    assert local_out and local_out == tree_bytes(remote / "data" / "coded", exclude=("timings.parquet",))
