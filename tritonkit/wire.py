"""Measure step, the wire: one Triton inference request per call on a kept-alive connection, from bytes
prepared once, so the client's own cost per request stays a small fraction of the server's.

Measured against a 1,000-sample MLP on a 2-core host (client and server on the same cores): tritonclient's
gRPC client spent ~250-300 us of CPU per request (grpc.aio and the sync stub alike), these wires ~60 us
(HTTP) and ~60-120 us (gRPC). Both speak only what Triton's endpoints need:

- HTTP/1.1 with Triton's binary tensor extension (Inference-Header-Content-Length), one request in
  flight per connection.
- gRPC over a minimal HTTP/2 client: up to a few streams in flight per connection, header blocks literal and
  prebuilt (no dynamic-table state to keep on our side), responses' header blocks decoded with `hpack`
  (cached once they stop changing the decoder's table), flow-control windows opened wide at connect and
  honoured when sending, SETTINGS and PING acknowledged, RST_STREAM and GOAWAY reported as errors.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

# gRPC status codes (grpc/status.h): a trailer's number -> the name errors are counted under.
GRPC_STATUS = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
               6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
               10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
               15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
HTTP_KINDS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL", 503: "UNAVAILABLE"}
RECV = 1 << 16


class WireError(Exception):
    """The connection broke (closed, reset, protocol violation): the request failed, reconnect."""


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def split_url(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return host.strip("[]"), int(port)


# --- HTTP/1.1 --------------------------------------------------------------------------------------------
def http_request(model: str, host: str, inputs: list[tuple[str, str, list[int], bytes]], outputs: tuple[str, ...]) -> bytes:
    """One POST /v2/models/<model>/infer with binary tensors: (name, datatype, shape, raw bytes) per input."""
    head = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                                  for n, d, s, b in inputs],
                       "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}).encode()
    body = head + b"".join(b for *_, b in inputs)
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class HttpConn:
    def __init__(self, host: str, port: int, timeout: float):
        self.sock = _connect(host, port, timeout)
        self.buf = b""

    def call(self, request: bytes, check: tuple[str, ...] = ()) -> str | None:
        """Send one request, read its response: None, or "KIND: message" for an error answer."""
        try:
            self.sock.sendall(request)
            while (end := self.buf.find(b"\r\n\r\n")) < 0:
                self._fill()
            head = self.buf[:end].decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            size = int(fields.get("content-length", "0"))
            while len(self.buf) < end + 4 + size:
                self._fill()
            body, self.buf = self.buf[end + 4:end + 4 + size], self.buf[end + 4 + size:]
        except (OSError, ValueError) as exc:
            raise WireError(f"{type(exc).__name__}: {exc}") from exc
        status = int(head[0].split(" ", 2)[1])
        json_size = int(fields.get("inference-header-content-length", size))
        if status != 200:
            try:
                message = json.loads(body[:json_size]).get("error", "")
            except ValueError:
                message = body[:200].decode(errors="replace")
            return f"{HTTP_KINDS.get(status, f'HTTP_{status}')}: {' '.join(str(message).split())[:200]}"
        if check:
            names = {o["name"] for o in json.loads(body[:json_size]).get("outputs", [])}
            missing = [o for o in check if o not in names]
            if missing:
                return f"MISSING_OUTPUT: response lacks output(s) {missing}"
        return None

    def _fill(self) -> None:
        chunk = self.sock.recv(RECV)
        if not chunk:
            raise WireError("connection closed by the server")
        self.buf += chunk

    def pipeline(self, keys, width: int, request_of, check_of, sent, done) -> None:
        """Send the requests of `keys` one at a time (HTTP/1.1 has one in flight per connection); see
        GrpcConn.pipeline for the callbacks. A broken connection fails its request and raises WireError."""
        for k in keys:
            sent(k)
            try:
                error = self.call(request_of(k), check_of(k))
            except WireError as exc:
                done(k, wire_error(exc))
                raise
            done(k, error)

    def close(self) -> None:
        self.sock.close()


def wire_error(exc: Exception) -> str:
    """A broken or timed-out connection as an error kind the report counts."""
    return f"{'DEADLINE_EXCEEDED' if 'timed out' in str(exc) else 'UNAVAILABLE'}: {exc}"


# --- gRPC over HTTP/2 -----------------------------------------------------------------------------------
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MAX_FRAME = 16384               # SETTINGS_MAX_FRAME_SIZE default: DATA is split at this size
MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name (RFC 7541 6.2.2), lengths < 127."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


@dataclass(frozen=True)
class GrpcRequest:
    """A prebuilt request: the gRPC message (5-byte prefix + ModelInferRequest bytes)."""
    message: bytes


def grpc_request(serialized: bytes) -> GrpcRequest:
    return GrpcRequest(b"\x00" + struct.pack(">I", len(serialized)) + serialized)


class GrpcConn:
    def __init__(self, host: str, port: int, timeout: float):
        from hpack import Decoder
        self.sock = _connect(host, port, timeout)
        self.decoder, self.cache = Decoder(), {}
        self.buf, self.stream, self.received, self.block = b"", 1, 0, b""
        self.send_window, self.stream_window_initial, self.max_frame = DEFAULT_WINDOW, DEFAULT_WINDOW, MAX_FRAME
        self.windows: dict[int, int] = {}     # send window of each stream still sending
        self.finished: list[int] = []         # streams that ended while another waited for a send window
        # :method POST and :scheme http are static-table indices 3 and 6 (RFC 7541 appendix A)
        self.headers = bytes((0x83, 0x86)) + _literal(b":path", MODEL_INFER) + \
            _literal(b":authority", f"{host}:{port}".encode()) + _literal(b"content-type", b"application/grpc") + \
            _literal(b"te", b"trailers")
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, MAX_WINDOW)   # no push; wide stream windows
        try:
            self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings)
                              + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)))
        except OSError as exc:
            raise WireError(f"{type(exc).__name__}: {exc}") from exc

    def call(self, request: GrpcRequest, check: tuple[str, ...] = ()) -> str | None:
        """One request, alone on the connection: None, or "CODE: message"."""
        result: list[str | None] = []
        self.pipeline(iter((0,)), 1, lambda k: request, lambda k: check, lambda k: None,
                      lambda k, error: result.append(error))
        return result[0]

    def pipeline(self, keys, width: int, request_of, check_of, sent, done) -> None:
        """Up to `width` requests in flight on this connection, one HTTP/2 stream each, the next sent as soon as
        one completes (as perf_analyzer shares a gRPC channel between several requests in flight).

        `keys` yields request indices; `request_of(k)` the GrpcRequest, `check_of(k)` the outputs to check
        in its response; `sent(k)` is called just before it goes out, `done(k, error)` when it is answered.
        A broken connection fails every request in flight and raises WireError (reconnect and go on)."""
        streams: dict[int, list] = {}     # stream id -> [key, outputs to check, data, header fields]

        def start() -> None:
            k = next(keys, None)
            if k is None:
                return
            stream, self.stream = self.stream, self.stream + 2
            streams[stream] = [k, check_of(k), b"", {}]
            sent(k)
            self.sock.sendall(_frame(HEADERS, END_HEADERS, stream, self.headers))
            self._send_data(stream, request_of(k).message, streams)

        def finish(stream: int) -> None:
            k, check, data, fields = streams.pop(stream)
            done(k, self._result(data, fields, check))
            start()
        try:
            for _ in range(width):
                start()
            while streams:
                ended = self.finished.pop() if self.finished else self._read(streams)
                if ended is not None:
                    finish(ended)
        except (OSError, ValueError, WireError) as exc:
            error = exc if isinstance(exc, WireError) else WireError(f"{type(exc).__name__}: {exc}")
            for k, *_ in streams.values():
                done(k, wire_error(error))
            raise error from exc

    def _send_data(self, stream: int, message: bytes, streams: dict) -> None:
        """The message in DATA frames no larger than the server allows, within its flow-control windows
        (while waiting for a window, other streams' frames are handled as they come)."""
        self.windows[stream] = self.stream_window_initial
        sent = 0
        while sent < len(message):
            room = min(self.max_frame, self.windows[stream], self.send_window, len(message) - sent)
            if room <= 0:
                ended = self._read(streams)
                if ended is not None:          # another stream finished meanwhile: the pipeline handles it next
                    self.finished.append(ended)
                continue
            chunk = message[sent:sent + room]
            sent += len(chunk)
            self.send_window -= len(chunk)
            self.windows[stream] -= len(chunk)
            self.sock.sendall(_frame(DATA, END_STREAM if sent >= len(message) else 0, stream, chunk))
        del self.windows[stream]

    def _read(self, streams: dict) -> int | None:
        """Handle one frame; return the stream it ended, if it ended one of ours."""
        kind, flags, sid, payload = self._frame()
        if kind == WINDOW_UPDATE:
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if sid == 0:
                self.send_window += inc
            elif sid in self.windows:
                self.windows[sid] += inc
            return None
        if kind not in (DATA, HEADERS, CONTINUATION, RST_STREAM):
            self._control(kind, flags, sid, payload)
            return None
        entry = streams.get(sid)
        if kind == DATA:
            self.received += len(payload)
            if self.received > MAX_WINDOW // 2:     # keep the connection window open
                self.sock.sendall(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
            if entry is not None:
                entry[2] += payload
        elif kind in (HEADERS, CONTINUATION):
            self.block += payload
            if flags & END_HEADERS:
                fields = self._decode(self.block)      # decoded even for a stream not ours: hpack's table
                self.block = b""
                if entry is not None:
                    entry[3].update(fields)
        elif kind == RST_STREAM and entry is not None:
            entry[3]["grpc-status"] = "2"
            entry[3]["grpc-message"] = f"stream reset by the server (code {int.from_bytes(payload, 'big')})"
            return sid
        if flags & END_STREAM and kind in (DATA, HEADERS) and entry is not None:
            return sid
        return None

    def _result(self, data: bytes, fields: dict, check: tuple[str, ...]) -> str | None:
        code = int(fields.get("grpc-status", "2"))
        if code:
            from urllib.parse import unquote
            return f"{GRPC_STATUS.get(code, str(code))}: {' '.join(unquote(fields.get('grpc-message', '')).split())[:200]}"
        if check and data:
            from tritonclient.grpc import service_pb2
            names = {o.name for o in service_pb2.ModelInferResponse.FromString(data[5:]).outputs}
            missing = [o for o in check if o not in names]
            if missing:
                return f"MISSING_OUTPUT: response lacks output(s) {missing}"
        return None

    def _decode(self, block: bytes) -> dict[str, str]:
        """hpack keeps the server's dynamic table; a block that did not change it decodes the same next time."""
        hit = self.cache.get(block)
        if hit is not None:
            return hit
        before = tuple(self.decoder.header_table.dynamic_entries)
        headers = dict(self.decoder.decode(block))
        if tuple(self.decoder.header_table.dynamic_entries) == before:
            self.cache[block] = headers
        return headers

    def _control(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = struct.unpack(">HI", payload[i:i + 6])
                if key == 0x4:
                    self.stream_window_initial = value
                elif key == 0x5:
                    self.max_frame = value
            self.sock.sendall(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            raise WireError("the server closed the connection (GOAWAY)")

    def _frame(self) -> tuple[int, int, int, bytes]:
        while len(self.buf) < 9:
            self._fill()
        size = int.from_bytes(self.buf[:3], "big")
        while len(self.buf) < 9 + size:
            self._fill()
        kind, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + size], self.buf[9 + size:]
        return kind, flags, sid, payload

    def _fill(self) -> None:
        chunk = self.sock.recv(RECV)
        if not chunk:
            raise WireError("connection closed by the server")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


CONNECTIONS = {"http": HttpConn, "grpc": GrpcConn}
