"""Measure step, sending: one level's requests on a schedule, each timed, with the client's own cost.

A level is closed-loop (N in flight, the next sent when one returns) or open-loop (sent at fixed or
Poisson times whatever the server does; latency counts from the *due* time, so a stalled server shows as
the queue it builds, not as fewer samples: no coordinated omission).

Requests are prepared once as bytes and sent over kept-alive connections (tritonkit.wire), one request in
flight per connection, one thread per connection. The load is spread over worker processes, each with its
own threads and GIL, started once and reused by every level, so a many-core client host is not capped at
one Python core; each reports the CPU seconds it used, which is how the bench knows when the client, not
the server, set the pace. Open loop: a dispatcher thread releases each request at its due time to the
connection threads, and opens another connection whenever every one is busy.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from .errors import UserError

CHECKED_RESPONSES = 4           # per level and process: responses parsed to check the requested outputs are there
START_DELAY_S = 0.2             # processes start a level together, this long after the command
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1024          # per process, open loop: beyond it due requests wait (and show as send lag)
SPIN_S = 0.0005                 # the dispatcher sleeps until this close to a due time, then spins
# Closed loop: requests in flight per connection. perf_analyzer shares a gRPC channel between up to 6
# (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT's default); one connection per request in flight cost the
# server ~10% more CPU per request on an H200 host at 256 in flight. HTTP/1.1 carries one at a time.
STREAMS_PER_CONNECTION = {"grpc": 6, "http": 1}


@dataclass(frozen=True)
class Closed:
    concurrency: int
    requests: int


@dataclass(frozen=True)
class Open:
    rate: float                 # requests per second offered
    requests: int
    poisson: bool = True        # exponential gaps; False: constant 1/rate
    seed: int = 0


@dataclass
class Samples:
    """One level, per request (times in seconds on time.monotonic, which all processes share)."""
    scheduled: Any              # numpy float64: when the request was due (closed loop: when it was sent)
    sent: Any
    done: Any
    errors: dict[int, str]      # request index -> "KIND: message"
    wall_s: float               # first due -> last answered
    cpu_s: tuple[float, ...]    # CPU seconds each client process used during the level


def default_processes(concurrency_max: int) -> int:
    """Client processes: one per 4 cores of this host (the rest serve or idle), never more than the
    concurrency, at least one. On a 2-core host the client shares the CPU with the server: one process."""
    return max(1, min(8, (os.cpu_count() or 1) // 4, concurrency_max))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders get the leftover units)."""
    exact = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[:total - sum(out)]:
        out[i] += 1
    return out


def schedule(level: Open, n: int, index: int, parts: int):
    """Due times (seconds from the level start) of one process's share of an open-loop level.

    Poisson: n points uniform over the level's span, sorted (a Poisson process given its count), so the
    offered rate is exactly the one asked for while gaps stay exponential; each process's stream is
    independent, and together they are Poisson at the full rate. Constant: one every parts/rate seconds,
    processes offset from each other."""
    import numpy as np
    span = n * parts / level.rate
    if level.poisson:
        return np.sort(np.random.default_rng([level.seed, index]).uniform(0.0, span, n))
    return (np.arange(n) + index / parts) * parts / level.rate


# --- worker process ------------------------------------------------------------------------------------
class _Worker:
    """The connections and threads of one client process."""

    def __init__(self, protocol: str, url: str, requests: list, check: tuple[str, ...], timeout: float):
        from .wire import CONNECTIONS, split_url
        self.host, self.port = split_url(url)
        self.conn_class, self.requests, self.check, self.timeout = CONNECTIONS[protocol], requests, check, timeout
        self.streams_per_connection = STREAMS_PER_CONNECTION[protocol]
        self.idle: queue.SimpleQueue = queue.SimpleQueue()    # kept-alive connections between levels

    def connection(self):
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            return self.conn_class(self.host, self.port, self.timeout)

    def drive(self, conn, keys, width: int, payload_of, rec, *, closed: bool) -> Any:
        """Send `keys` on `conn`, `width` in flight (gRPC streams; HTTP: 1), each timed into `rec`; returns the
        connection to keep using (a new one after a broken wire, which fails the requests it had in flight)."""
        from .wire import WireError

        def sent(k: int) -> None:
            rec.sent[k] = time.monotonic()
            if closed:
                rec.scheduled[k] = rec.sent[k]

        def done(k: int, error: str | None) -> None:
            rec.done[k] = time.monotonic()
            if error:
                rec.errors[k] = error

        def check_of(k: int) -> tuple[str, ...]:
            rec.checked += 1
            return self.check if rec.checked <= CHECKED_RESPONSES else ()
        keys = iter(keys)
        while True:
            try:
                conn.pipeline(keys, width, lambda k: self.requests[payload_of(k) % len(self.requests)], check_of,
                              sent, done)
                return conn
            except WireError:
                conn.close()
                conn = self.conn_class(self.host, self.port, self.timeout)

    def run(self, level: Closed | Open, n: int, index: int, parts: int, first: int, start_at: float):
        rec = _Record(n)
        if isinstance(level, Open):
            rec.scheduled[:] = start_at + schedule(level, n, index, parts)
        cpu0 = time.process_time()
        if isinstance(level, Closed):
            # gRPC: several requests in flight per connection (HTTP/2 streams), as perf_analyzer shares its
            # channels; HTTP/1.1: one per connection. The connections take their next key from one shared
            # iterator: with a fixed share each, a connection with fewer streams (16 in flight in one process = 6+5+5) would
            # finish last, alone, and the level's tail would run below its concurrency.
            share = self.streams_per_connection
            widths = _split(level.concurrency, -(-level.concurrency // share))
            keys = _Shared(range(n))

            def loop(conn, width: int):
                time.sleep(max(0.0, start_at - time.monotonic()))
                self.idle.put(self.drive(conn, keys, width, lambda k: first + k * parts + index, rec, closed=True))
            threads = [threading.Thread(target=loop, args=(self.connection(), w), daemon=True) for w in widths]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            self._open_loop(rec.scheduled, first, index, parts, rec)
        return rec.scheduled, rec.sent, rec.done, rec.errors, time.process_time() - cpu0

    def _open_loop(self, due, first: int, index: int, parts: int, rec) -> None:
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        busy, threads, lock = [0], [], threading.Lock()

        def loop(conn):
            while (k := jobs.get()) is not None:
                conn = self.drive(conn, (k,), 1, lambda k: first + k * parts + index, rec, closed=False)
                with lock:
                    busy[0] -= 1
            self.idle.put(conn)

        def grow():
            t = threading.Thread(target=loop, args=(self.connection(),), daemon=True)
            t.start()
            threads.append(t)
        for _ in range(min(4, len(due))):
            grow()
        for k, t_due in enumerate(due):
            while (wait := t_due - time.monotonic()) > SPIN_S:
                time.sleep(wait - SPIN_S)
            while time.monotonic() < t_due:
                pass
            with lock:
                busy[0] += 1
                full = busy[0] > len(threads)
            if full and len(threads) < MAX_CONNECTIONS:
                grow()
            jobs.put(k)
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join()


class _Shared:
    """An iterator that several threads take from."""

    def __init__(self, items):
        self._it, self._lock = iter(items), threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            return next(self._it)


class _Record:
    def __init__(self, n: int):
        import numpy as np
        self.scheduled, self.sent, self.done = np.zeros(n), np.zeros(n), np.zeros(n)
        self.errors: dict[int, str] = {}
        self.checked = 0


def _process(pipe, protocol, url, requests, check, timeout) -> None:
    try:
        worker = _Worker(protocol, url, requests, check, timeout)
        worker.idle.put(worker.connection())           # connects now: a refused connection fails the start
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises UserError
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ready", None))
    while (cmd := pipe.recv()) is not None:
        pipe.send(worker.run(*cmd))


class Driver:
    """Client processes (spawned: the parent's gRPC and thread state must not be forked), started once."""

    def __init__(self, protocol: str, url: str, requests: list, check: tuple[str, ...], *, processes: int,
                 timeout: float):
        self.url, self.timeout = url, timeout
        ctx = multiprocessing.get_context("spawn")
        self._pipes, self._procs = [], []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            self._pipes.append(parent)
            self._procs.append(ctx.Process(target=_process, args=(child, protocol, url, requests, check, timeout),
                                           daemon=True, name="tritonkit-bench"))
        self._next = 0

    @property
    def processes(self) -> int:
        return len(self._procs)

    def __enter__(self):
        for p in self._procs:
            p.start()
        for pipe in self._pipes:
            kind, detail = "error", "the process exited at start (its traceback is above)"
            if pipe.poll(CONNECT_TIMEOUT_S + 30):
                try:
                    kind, detail = pipe.recv()
                except EOFError:
                    pass
            if kind != "ready":
                self.__exit__()
                raise UserError(f"a bench process could not connect to {self.url}", actual=detail,
                                fix="is the server running? start it with `tritonkit serve`")
        return self

    def __exit__(self, *exc):
        for pipe, proc in zip(self._pipes, self._procs):
            if proc.is_alive():
                try:
                    pipe.send(None)
                except OSError:
                    pass
        for proc in self._procs:
            proc.join(timeout=self.timeout + 5)
            if proc.is_alive():
                proc.kill()

    def run(self, level: Closed | Open) -> Samples:
        import numpy as np
        parts = min(self.processes, level.concurrency) if isinstance(level, Closed) else self.processes
        concurrency = _split(level.concurrency, parts) if isinstance(level, Closed) else None
        # closed loop: requests in proportion to each process's concurrency, so the processes finish together
        shares = _split(level.requests, parts) if concurrency is None else _apportion(level.requests, concurrency)
        start_at = time.monotonic() + START_DELAY_S
        first = self._next
        self._next += level.requests          # later levels continue through the payloads
        active = [i for i, n in enumerate(shares) if n]
        for i in active:
            sub = Closed(concurrency[i], shares[i]) if concurrency else level
            self._pipes[i].send((sub, shares[i], i, parts, first, start_at))
        results = []
        for i in active:
            while not self._pipes[i].poll(1.0):
                if not self._procs[i].is_alive():
                    raise RuntimeError("a bench process died (its traceback is above); this is a bug")
            results.append(self._pipes[i].recv())
        scheduled, sent, done = (np.concatenate([r[j] for r in results]) for j in range(3))
        errors, offset = {}, 0
        for r in results:
            errors.update({offset + k: v for k, v in r[3].items()})
            offset += len(r[0])
        return Samples(scheduled=scheduled, sent=sent, done=done, errors=errors,
                       wall_s=float(done.max() - scheduled.min()) if len(done) else 0.0,
                       cpu_s=tuple(r[4] for r in results))
