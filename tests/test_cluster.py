"""A real multi-node Ray cluster on this machine (`ray start --head` + a second `ray start --address`): the job
joins it with --address, a worker node is killed mid-job, and every image still ends exactly once."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_reliability import CLI, _check_exactly_once, _descendants, _outputs

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env=None):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.run([ray_bin, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def two_node_cluster():
    import shutil
    import tempfile
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled")  # a loopback-only test cluster
    head = _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                "--node-ip-address=127.0.0.1", "--disable-usage-stats", env=env)
    assert head.returncode == 0, head.stderr
    node = _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats", env=env)
    assert node.returncode == 0, node.stderr
    yield f"127.0.0.1:{port}", env
    _ray("stop", "--force", env=env)
    shutil.rmtree(tmp, ignore_errors=True)


def test_job_on_a_two_node_cluster_survives_losing_a_worker_node(two_node_cluster, kill_corpus):
    address, env = two_node_cluster
    work, n = kill_corpus
    out = work / "out"
    env = dict(env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*CLI, "run", str(work / "m.csv"), "--out", str(out), "--address", address,
                             "--workers", "2", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    # the second node's raylet: the `ray start --address` process tree that is not the head's
    killed = False
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not killed:
        if len(_outputs(out)) >= 2:
            raylets = subprocess.run(["pgrep", "-f", "raylet/raylet"], capture_output=True, text=True).stdout.split()
            workers = [int(p) for p in raylets]
            if len(workers) >= 2:
                victim = max(workers)  # the node started second
                for pid in [victim] + _descendants(victim):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed = True
        time.sleep(0.1)
    output = proc.communicate(timeout=600)[0]
    assert killed, "no second raylet found"
    assert proc.returncode == 0, output
    print(output)
    assert "died and were replaced" in output
    _check_exactly_once(out, n)


def test_job_joins_a_cluster_by_address(two_node_cluster, kill_corpus):
    address, env = two_node_cluster
    work, n = kill_corpus
    r = subprocess.run([*CLI, "run", str(work / "m.csv"), "--out", str(work / "out"), "--no-progress"],
                       capture_output=True, text=True, env=dict(env, RAY_ADDRESS=address, PYTHONPATH=str(ROOT)),
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 2 cpu worker(s)" in r.stdout + r.stderr
    _check_exactly_once(work / "out", n)
