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


def _netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    import shutil
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"rbprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*args):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r.stdout


@pytest.fixture
def netns_cluster():
    """Three Ray nodes as three hosts on one bridge: the head (no CPUs, so no work) in this namespace, and two
    worker nodes of one CPU, each in its own network namespace with its own address - they reach the head and each
    other only over the bridge, as machines on a LAN. Files are shared, as on a cluster with a shared volume."""
    import shutil
    import tempfile
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"rb{os.getpid() % 10000}"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    bridge, spaces = f"{tag}br", [f"{tag}n1", f"{tag}n2"]
    tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled")
    port = _free_port()
    try:
        _sh("ip", "link", "add", bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{net}.1/24", "dev", bridge)
        _sh("ip", "link", "set", bridge, "up")
        for k, ns in enumerate(spaces, start=2):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", f"{ns}v", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", f"{ns}v", "master", bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{net}.{k}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        head = _ray("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                    f"--node-ip-address={net}.1", "--disable-usage-stats", env=env)
        assert head.returncode == 0, head.stderr
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        for k, ns in enumerate(spaces, start=2):
            node = subprocess.run(["ip", "netns", "exec", ns, ray_bin, "start", f"--address={net}.1:{port}",
                                   "--num-cpus=1", f"--node-ip-address={net}.{k}", "--disable-usage-stats"],
                                  capture_output=True, text=True, timeout=120, env=env)
            assert node.returncode == 0, node.stderr
        yield f"{net}.1:{port}", env, spaces
    finally:
        for ns in spaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _ray("stop", "--force", env=env)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _workers_in(ns: str) -> int:
    """Ray's image workers (our actor class) running in namespace ``ns``."""
    n = 0
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
        try:
            n += "_Worker" in open(f"/proc/{pid}/cmdline").read()
        except OSError:
            pass
    return n


def test_a_cluster_of_network_namespaces_loses_a_node_and_every_image_ends_once(netns_cluster, kill_corpus):
    """Worker nodes that reach the head only over a bridge, as separate hosts do; when one whole node goes (every
    process in its namespace killed), its images are retried on the other and each ends in the ledger once."""
    address, env, spaces = netns_cluster
    work, n = kill_corpus
    out = work / "out"
    proc = subprocess.Popen([*CLI, "run", str(work / "m.csv"), "--out", str(out), "--address", address,
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(env, PYTHONPATH=str(ROOT)))
    seen_on = set()
    lost = False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not lost:
        seen_on |= {ns for ns in spaces if _workers_in(ns)}
        if len(_outputs(out)) >= 2 and seen_on == set(spaces):
            for pid in subprocess.run(["ip", "netns", "pids", spaces[1]], capture_output=True,
                                      text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            lost = True
        time.sleep(0.1)
    output = proc.communicate(timeout=600)[0]
    assert seen_on == set(spaces), f"workers ran only in {seen_on}: {output}"
    assert lost, "the job ended before a node could be lost"
    assert proc.returncode == 0, output
    assert "on 2 cpu worker(s)" in output and "died and were replaced" in output, output
    _check_exactly_once(out, n)
