"""Fixtures of the distributed stages: one two-node Ray cluster per session, and a real S3 endpoint.

The cluster is a head and a worker started as separate Ray nodes on this
machine (`ray.cluster_utils.Cluster`). Each node offers one `trainer_slot`,
so a test can pin one training worker per node.
"""

from __future__ import annotations

import os
import time
import re

import pytest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A running two-node Ray cluster; yields its address (ray.init is done)."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray Train's preemption watcher (in the controller, which inherits the nodes' environment) polls
    # Ray Core's drain state every 5 s by default; the preemption test's run is shorter than that.
    os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] = "0.5"
    # Ray workers inherit the environment of the nodes, which start now: give them the
    # moto server's (fake) credentials, as a cluster's nodes get theirs from instance roles.
    _set_fake_aws_credentials()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"trainer_slot": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"trainer_slot": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    os.environ["RAY_ADDRESS"] = cluster.address
    _CLUSTERS.append(cluster)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)


_CLUSTERS: list = []


@pytest.fixture(scope="session")
def ray_nodes(ray_cluster):
    """The session cluster's `ray.cluster_utils.Cluster`, for tests that remove and add nodes.

    Such a test must leave it as it found it: a head and one worker node, each with one trainer_slot.
    """
    return _CLUSTERS[-1]


def drain_for_preemption(node_id: str, deadline_s: float) -> None:
    """Tell Ray Core that a node is being preempted, as a spot reclaim does (Ray's own tests do the same:
    `ray._private.test_utils.EC2InstanceTerminatorWithGracePeriod._drain_node`)."""
    import time

    import ray
    from ray._private import services
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=services.canonicalize_bootstrap_address_or_die(addr="auto"))
    accepted, why = gcs.drain_node(node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                   "test: spot reclaim", int(time.time() * 1000 + deadline_s * 1000))
    assert accepted, f"the drain of node {node_id} was refused: {why}"


def _set_fake_aws_credentials() -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with credentials in the environment; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    _set_fake_aws_credentials()
    _S3_SERVERS.append(server)
    try:
        yield f"http://{host}:{port}"
    finally:
        _S3_SERVERS.pop().stop()


_S3_SERVERS: list = []


def s3_outage(seconds: float):
    """Stop the session's S3 server now and start it again on the same port `seconds` later (its data stays:
    moto's backends live in this process). Returns the thread that restarts it; join it before the test ends."""
    import threading

    from moto.server import ThreadedMotoServer

    server = _S3_SERVERS[-1]
    host, port = server.get_host_and_port()
    server.stop()

    def restart() -> None:
        time.sleep(seconds)
        again = ThreadedMotoServer(ip_address=host, port=port)
        again.start()
        _S3_SERVERS[-1] = again

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the moto server; yields its name."""
    import boto3

    name = ("ltx-ray-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()))[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name
