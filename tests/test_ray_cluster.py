"""The ray executor on a two-node Ray cluster started on this machine, reached through ``address``.

``ray start --head`` plus ``ray start --address`` for a second node, each with its own
ports (all free ones, picked by the test) and one temporary folder, so the cluster does
not meet another Ray on the machine. Teardown stops the processes of this cluster alone,
by process id (the ones that name its temporary folder, and their children): ``ray stop``
would stop every Ray of the user on the machine.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'poisonbench[ray]')")

#: Ports each node takes besides its workers' (the head also takes the GCS port).
_NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "runtime-env-agent-port")
_WORKER_PORTS = 8


def _free_ports(count: int) -> list[int]:
    """Distinct ports free now (held open together while they are picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _node_options(ports: list[int]) -> list[str]:
    named = [f"--{name}={port}" for name, port in zip(_NODE_PORTS, ports)]
    workers = ",".join(str(port) for port in ports[len(_NODE_PORTS):])
    return [*named, f"--worker-port-list={workers}"]


def _cluster_pids(temp: Path) -> list[int]:
    """Processes of the cluster in ``temp``: those whose command line names it, and their descendants."""
    parents: dict[int, int] = {}
    roots = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rpartition(")")[2].split()[1])
        if str(temp) in command:
            roots.append(int(proc.name))
    found = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found - {os.getpid()})


def _stop_cluster(temp: Path) -> None:
    """SIGTERM the cluster's processes, then SIGKILL what is left after a grace period."""
    pids = _cluster_pids(temp)
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while time.time() < deadline and (pids := [p for p in pids if Path(f"/proc/{p}").exists()]):
            time.sleep(0.2)
        if not pids:
            return


@pytest.fixture
def two_node_ray(monkeypatch):
    """A head node and a worker node, one CPU each; yields the head's address."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the teardown finds the cluster's processes under /proc")
    # a short folder: Ray's socket paths under it must fit in 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="pbray", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # without this `ray start` turns on token authentication when ~/.ray/auth_token exists
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    per_node = len(_NODE_PORTS) + _WORKER_PORTS
    ports = _free_ports(1 + 2 * per_node)
    address = f"127.0.0.1:{ports[0]}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
              f"--temp-dir={temp}", "--disable-usage-stats"]
    head = [ray_cli, "start", "--head", f"--port={ports[0]}", "--include-dashboard=false", *common,
            *_node_options(ports[1:1 + per_node])]
    worker = [ray_cli, "start", f"--address={address}", *common, *_node_options(ports[1 + per_node:])]
    try:
        for command in (head, worker):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"{' '.join(command[:3])} failed:\n{done.stdout}\n{done.stderr}"
        yield address
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _alive_nodes(address: str) -> int:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return sum(1 for node in ray.nodes() if node["Alive"])
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_sweep_on_a_two_node_ray_cluster_matches_local(two_node_ray, tiny_config, write_config, tmp_path):
    assert _alive_nodes(two_node_ray) == 2
    tiny_config["attacks"] = [{"name": "none", "rates": [0, 0.5]}]
    outs = {}
    executors = {
        "local": {"name": "local", "threads": 1},
        # one CPU per cell on nodes of one CPU each: the two cells run on the two nodes
        "ray": {"name": "ray", "address": two_node_ray, "workers": 2, "num_cpus": 1, "threads": 1},
    }
    for name, executor in executors.items():
        config = copy.deepcopy(tiny_config)
        config["executor"] = executor
        outs[name] = tmp_path / name
        arguments = ["run", str(write_config(config, f"{name}.yaml")), "--out", str(outs[name]), "--quiet"]
        if name == "local":
            assert main(arguments) == 0
        else:  # a driver of its own, as on a real cluster: no Ray session of earlier tests in this process
            driver = [sys.executable, "-c", "import sys; from benchmark.cli import main; sys.exit(main(sys.argv[1:]))", *arguments]
            done = subprocess.run(driver, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout + done.stderr
    local, on_ray = (pd.read_csv(outs[name] / "results.csv").sort_values(["cell", "case"]).reset_index(drop=True) for name in outs)
    assert len(local) > 0
    pd.testing.assert_frame_equal(local, on_ray)
