"""A private three-node Redis Cluster for tests, built from the ``redis-server`` binary.

Each node listens on a free loopback port with its cluster bus on another
(``--cluster-port``), keeps its files in a temporary directory and persists
nothing. The slots are split in three with CLUSTER ADDSLOTSRANGE and the nodes
introduced with CLUSTER MEET; the cluster is ready once every node reports
``cluster_state:ok`` and knows the other two.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from live import free_port

SLOTS = 16384


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2
        )


@dataclass
class ClusterNodes:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A URL naming one node; the cluster client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url, decode_responses=True, socket_timeout=2)


def _start(node: Node, binary: str) -> None:
    argv = [
        binary,
        "--port",
        str(node.port),
        "--cluster-port",
        str(node.bus_port),
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(node.directory),
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    node.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(condition: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis cluster: {what} not reached in {timeout}s")


def _ready(nodes: list[Node]) -> bool:
    for node in nodes:
        with node.client() as client:
            info = client.cluster("INFO")  # parsed into a dict by redis-py
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(nodes):
                return False
            if int(info["cluster_slots_ok"]) != SLOTS:
                return False
    return True


@contextmanager
def running_cluster(size: int = 3, timeout: float = 30.0) -> Iterator[ClusterNodes]:
    """Start ``size`` nodes, join them into a cluster covering every slot; stop them after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    root = Path(tempfile.mkdtemp(prefix="tq-redis-cluster-"))
    cluster = ClusterNodes()
    try:
        used: set[int] = set()
        for index in range(size):
            port, bus = free_port(), free_port()
            while port in used or bus in used or port == bus:
                port, bus = free_port(), free_port()
            used |= {port, bus}
            directory = root / f"node{index}"
            directory.mkdir()
            cluster.nodes.append(Node(port, bus, directory))
        for node in cluster.nodes:
            _start(node, binary)
        for node in cluster.nodes:
            with node.client() as client:
                _wait(client.ping, f"node {node.port} answering", timeout)

        bounds = [SLOTS * i // size for i in range(size + 1)]
        first = cluster.nodes[0]
        for index, node in enumerate(cluster.nodes):
            with node.client() as client:
                client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1
                )
        with first.client() as client:
            for node in cluster.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        _wait(lambda: _ready(cluster.nodes), "cluster_state:ok on every node", timeout)
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
