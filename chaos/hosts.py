"""Hosts: one Linux network namespace per worker process, joined to the database by a veth pair.

Host ``i`` is the namespace ``jobs-chaos-i``; its end of the pair has 10.77.i.2/30 and the
root namespace's end 10.77.i.1, where the database listens. The namespace has no other
route, so a worker's traffic stays on the addresses made here.

A partition points each end's neighbour entry for the other at a MAC address that no
interface has: every frame is then dropped, silently and both ways, while the links,
routes, sockets and processes stay up, which is what a dead switch or a cut cable looks
like to TCP (no reset, no error, only silence). Healing deletes the entries and ARP
finds the real peer again. This needs only iproute2: no netem, no nftables.

Where namespaces cannot be made (not root, no ``ip``), every host is the loopback
interface of this machine, and partitions are not possible; the run says so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NETWORK = ipaddress.ip_network("10.77.0.0/16")
NAMESPACE_PREFIX = "jobs-chaos-"
LINK_PREFIX = "jobschaos"  # + index, the root namespace's end (interface names have at most 15 characters)
PEER_NAME = "veth0"  # the host's end, inside its namespace
NOWHERE_MAC = "02:00:00:00:00:00"  # locally administered; no interface here has it
MAX_HOSTS = 250
# What a run leaves for the next one to find if it is killed: its lock, its processes, its
# server. One folder per user, so that a run as root never blocks a user's (or the reverse).
STATE = Path(tempfile.gettempdir()) / f"jobs-chaos-{os.getuid()}"
PIDS = STATE / "pids"  # the processes a run started


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Host:
    index: int
    namespace: str | None  # None: loopback, no partitions
    server_address: str  # where this host reaches the database
    partitioned: bool = False

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def link(self) -> str:
        return f"{LINK_PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return str(ipaddress.ip_address(self.server_address) + 1) if self.namespace else "127.0.0.1"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as run on this host (``ip netns exec`` execs it: the PID is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *argv] if self.namespace else argv

    def partition(self) -> None:
        self._neighbours("replace", "lladdr", NOWHERE_MAC, "nud", "permanent")
        self.partitioned = True

    def heal(self) -> None:
        self._neighbours("del", check=False)
        self.partitioned = False

    def _neighbours(self, verb: str, *extra: str, check: bool = True) -> None:
        ip("neigh", verb, self.address, *extra, "dev", self.link, check=check)
        ip("-n", self.namespace, "neigh", verb, self.server_address, *extra, "dev", PEER_NAME, check=check)


def remember_process(pid: int) -> None:
    STATE.mkdir(exist_ok=True)
    with open(PIDS, "a") as pids:
        pids.write(f"{pid}\n")


def kill_leftover_processes() -> list[str]:
    """SIGKILL what a killed run left running (workers, the producer); returns their PIDs.

    Only processes that still look like ours (their command line runs process_tasks or
    chaos.load): a PID may have been reused since.
    """
    killed = []
    for pid in PIDS.read_text().split() if PIDS.exists() else []:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"process_tasks" in cmdline or b"chaos.load" in cmdline:
                os.killpg(int(pid), signal.SIGKILL)  # each in a session of its own: a parent's children too
                killed.append(f"process {pid}")
        except (OSError, ValueError):
            pass
    PIDS.unlink(missing_ok=True)
    return killed


def why_no_namespaces() -> str | None:
    """None when this process can make network namespaces; else the reason, for the report."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    probe = f"{NAMESPACE_PREFIX}probe"
    made = ip("netns", "add", probe, check=False)
    ip("netns", "del", probe, check=False)
    if made.returncode:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    clash = _routes_overlapping(NETWORK)
    if clash:
        return f"{NETWORK} is already routed on this machine ({clash}); the test will not touch it"
    return None


def _routes_overlapping(network) -> str | None:
    routes = json.loads(ip("-j", "route", "show").stdout or "[]")
    for route in routes:
        dst = route.get("dst")
        if dst and dst != "default" and not route.get("dev", "").startswith(LINK_PREFIX):
            if ipaddress.ip_network(dst, strict=False).overlaps(network):
                return f"{dst} dev {route.get('dev')}"
    return None


def make_hosts(count: int) -> tuple[list[Host], str | None]:
    """``count`` hosts: namespaces when possible, else loopback with the reason why."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"CHAOS_WORKERS must be 1..{MAX_HOSTS}, got {count}")
    reason = why_no_namespaces()
    if reason:
        return [Host(i, None, "127.0.0.1") for i in range(1, count + 1)], reason
    hosts = []
    try:
        for i in range(1, count + 1):
            host = Host(i, f"{NAMESPACE_PREFIX}{i}", str(NETWORK.network_address + (i << 8) + 1))
            ip("netns", "add", host.namespace)
            ip("link", "add", host.link, "type", "veth", "peer", "name", PEER_NAME, "netns", host.namespace)
            ip("addr", "add", f"{host.server_address}/30", "dev", host.link)
            ip("link", "set", host.link, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", PEER_NAME)
            ip("-n", host.namespace, "link", "set", PEER_NAME, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
            hosts.append(host)
    except subprocess.CalledProcessError as exc:
        remove_hosts()
        raise RuntimeError(f"could not make host {i}: {' '.join(exc.cmd)}: {exc.stderr.strip()}") from exc
    return hosts, None


def remove_hosts() -> list[str]:
    """Remove every namespace and link of this test (ours, or a killed run's); returns what went.

    Processes still inside a namespace are killed first: a namespace outlives ``ip netns
    del`` while anything runs in it.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return []
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        namespace = line.split()[0] if line.strip() else ""
        if not namespace.startswith(NAMESPACE_PREFIX):
            continue
        for pid in ip("netns", "pids", namespace, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("netns", "del", namespace, check=False)
        removed.append(namespace)
    for link in json.loads(ip("-j", "link", "show", check=False).stdout or "[]"):
        if link.get("ifname", "").startswith(LINK_PREFIX):
            ip("link", "del", link["ifname"], check=False)
            removed.append(link["ifname"])
    return removed


@dataclass
class WorkerRun:
    """One worker process on a host, from start to exit. ``seq`` numbers them in the run."""

    seq: int
    host: Host
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stopped: bool = False  # SIGSTOPped and not yet continued
    terminated: bool = False  # sent SIGTERM (or SIGKILL): its exit is expected
    outage_ended: float | None = None  # when its last stop or partition ended
    processes: int = 0  # a --processes parent with that many children; 0: one plain worker process

    @property
    def label(self) -> str:
        return worker_label(self.host, self.seq)

    @property
    def supervised(self) -> bool:
        return self.processes > 0

    def children(self) -> list[int]:
        """The PIDs of a --processes parent's live children (none for a plain worker)."""
        if not self.supervised or not self.alive:
            return []
        pid = self.process.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    @property
    def alive(self) -> bool:
        if self.ended is None and self.process.poll() is not None:
            self.ended = time.time()
        return self.ended is None

    def signal(self, signum: int) -> None:
        """To the worker; on a --processes host, to the parent and its children (its process group,
        ``start_new_session``), but SIGTERM to the parent only, which passes it on (a second
        SIGTERM would end the children at once)."""
        if not self.alive:
            return
        if self.supervised and signum != signal.SIGTERM:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass
        else:
            self.process.send_signal(signum)


def worker_label(host: Host, seq: int) -> str:
    """The worker's name in the report, its log file and its connections' application_name."""
    return f"{host.name}-w{seq}"


def start_worker(seq: int, host: Host, *, log_dir: Path, env: dict, args: list[str], processes: int = 0) -> WorkerRun:
    log = log_dir / f"worker-{worker_label(host, seq)}.log"
    with open(log, "w") as out:
        # A session of its own: Ctrl-C reaches the harness only, which stops the workers itself.
        process = subprocess.Popen(host.command([sys.executable, "manage.py", "process_tasks", *args]),
                                   cwd=Path(__file__).resolve().parent.parent, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return WorkerRun(seq, host, process, log, processes=processes)


# The even-numbered hosts run ``process_tasks --processes PROCESSES``: a parent that beats for its
# children and ends a process whose job overran its timeout. Only they serve the ``hard`` queue
# (chaos.tasks: jobs that hold the GIL, or block in C, past stale_after or their timeout).
PROCESSES = 2
PROCESS_CONCURRENCY = 4  # job threads per child


def supervised(host: Host) -> bool:
    return host.index % 2 == 0


def worker_args(host: Host, concurrency: int) -> list[str]:
    if supervised(host):
        return ["--no-scheduler", "--processes", str(PROCESSES), "--concurrency", str(PROCESS_CONCURRENCY),
                "--queue", "default", "--queue", "hard"]
    return ["--no-scheduler", "--concurrency", str(concurrency), "--queue", "default"]


class Cluster:
    """The hosts and the worker processes on them: at most one live worker per host."""

    def __init__(self, hosts: list[Host], *, log_dir: Path, env_for, worker_args):
        self.hosts = hosts
        self.log_dir = log_dir
        self.env_for = env_for  # (host, label) -> the worker's environment (its DATABASE_URL)
        self.worker_args = worker_args  # host -> the worker's options
        self.runs: list[WorkerRun] = []

    def start(self, host: Host) -> WorkerRun:
        seq = len(self.runs) + 1
        run = start_worker(seq, host, log_dir=self.log_dir, env=self.env_for(host, worker_label(host, seq)),
                           args=self.worker_args(host), processes=PROCESSES if supervised(host) else 0)
        remember_process(run.process.pid)
        self.runs.append(run)
        return run

    def on(self, host: Host) -> WorkerRun | None:
        """The live worker on ``host``, if any."""
        return next((r for r in reversed(self.runs) if r.host is host and r.alive), None)

    def by_pid(self, pid: int) -> WorkerRun | None:
        return next((r for r in reversed(self.runs) if r.process.pid == pid), None)

    def stop_all(self, timeout: float) -> list[WorkerRun]:
        """SIGTERM every live worker (continuing stopped ones); those still alive after
        ``timeout`` are killed and returned: they hung."""
        live = [r for r in self.runs if r.alive]
        for run in live:
            run.terminated = True
            run.signal(signal.SIGCONT)
            run.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(r.alive for r in live) and time.monotonic() < deadline:
            time.sleep(0.1)
        hung = [r for r in live if r.alive]
        self.kill_all()
        return hung

    def kill_all(self) -> None:
        for run in self.runs:
            if run.alive:
                run.terminated = True
                run.signal(signal.SIGKILL)
                run.process.wait(10)
                run.alive  # noqa: B018 - records the end time
