"""Process control for a server launched by tritonkit: free ports, parent-death signal, process groups, stop.

Linux only, through /proc and prctl, like the embedded server itself.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tritonkit.errors import UserError

LOG = logging.getLogger(__name__)


# --- Ports -----------------------------------------------------------------------------------------

def listening_pids(port: int) -> list[str]:
    """'1234 (tritonserver)' for each process listening on TCP `port`, best effort through /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not inodes:
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                found.append(f"{proc.name} ({(proc / 'comm').read_text().strip()})")
        except OSError:
            continue
    return found


def check_port_free(address: str, port: int, name: str) -> None:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the server itself: a port in TIME_WAIT is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError("the bind address is not an address of this machine", actual=address,
                                expected="a local address such as 127.0.0.1", fix="pass another --address") from None
            if exc.errno == errno.EACCES:
                raise UserError(f"{name} port {port} needs root (ports below 1024 are privileged)",
                                where=f"--{name}-port", fix=f"pass a --{name}-port of 1024 or above") from None
            if exc.errno != errno.EADDRINUSE:
                raise
            holders = listening_pids(port)
            who = f"process {', '.join(holders)}" if holders else "the process listening on it (`ss -ltnp`)"
            raise UserError(f"{name} port {port} on {address} is not available: {exc.strerror}",
                            where=f"--{name}-port", fix=f"stop {who}, or pass another --{name}-port") from None


# --- Children and their process groups -------------------------------------------------------------

def pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    """Runs in the child before exec: SIGTERM it when the parent dies (no orphaned tritonserver).

    Linux delivers PDEATHSIG when the *thread* that forked the child exits, so start servers from a
    thread that outlives them (the main thread, as `serve()` does).
    """
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, via /proc."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in process group `pgid` (children of a crashed leader), and wait until
    it is gone: they are reparented to init, which reaps them."""
    deadline = time.monotonic() + 5.0
    while group_members(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM `proc` (the leader of its own process group), wait `grace_s`, then SIGKILL the whole group.
    Returns its exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            LOG.warning("%s pid %d ignored SIGTERM for %ss: killing its process group",
                        Path(proc.args[0]).name, proc.pid, grace_s)
            kill_group(proc.pid)
            proc.wait()
    kill_group(proc.pid)
    return proc.returncode


def free_ports(n: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (tests and benchmarks start servers on them)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports
