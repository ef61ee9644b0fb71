"""The fault suite's own tools, without servers: the ledger counts losses, duplicates and split
prediction ids; the lag watch measures a stall from the end of a fault; the proxy passes
traffic, resets uploads only, or resets everything. (So a scenario that passes does so on
numbers that can come out wrong.)"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from modelbus_embedded.chaos import FaultProxy, LagWatch, Ledger, Row, Stall, render_markdown


def test_the_ledger_counts_lost_duplicated_and_split_answers():
    ledger = Ledger("t")
    for i in range(6):
        ledger.record_sent(f"t-{i}", f"e-{i}")
    ledger.predictions = {"t-0": ["p0"], "t-1": ["p1", "p1", "p1"], "t-2": ["p2", "other"]}
    ledger.failures = {"t-3": ["unknown_model: ..."]}
    ledger.dead = {"t-4": ["too_large: ..."]}
    tally = ledger.tally()
    assert (tally.sent, tally.answered, tally.failed, tally.dead_lettered) == (6, 3, 1, 1)
    assert (tally.lost, tally.lost_ids) == (1, ["t-5"])
    assert (tally.duplicates, tally.split_ids) == (3, 1)
    row = Row.of("t", tally, Stall(0.5))
    assert not row.ok  # lost and split ids
    assert "| t | 6 | 3 | 1 | 1 | 1 | 3 (1 split) | 0.5 | yes | 0 |" in render_markdown([row])


def test_a_stall_counts_from_the_end_of_the_fault():
    watch = LagWatch("unused:9092", {"g": ["t"]})
    key = ("g", "t", 0)
    assert watch.note(key, end=10, done=5, now=100.0) == 5
    watch.note(key, end=12, done=5, now=104.0)  # a backlog, no commit: 4 s
    assert watch.longest.seconds == pytest.approx(4.0)
    assert watch.longest.where == "g t[0]"
    watch.note(key, end=12, done=12, now=105.0)  # caught up
    watch.reset()
    with watch.fault():  # stuck for 30 s during a fault: not a stall
        watch.note(key, end=20, done=12, now=110.0)
        watch.note(key, end=30, done=12, now=140.0)
    watch._fault_ended = 140.0
    watch.note(key, end=30, done=12, now=143.0)  # 3 s after the fault ended, still stuck
    assert watch.longest.seconds == pytest.approx(3.0)
    watch.note(key, end=30, done=20, now=144.0)  # progress
    watch.note(key, end=30, done=20, now=150.0)
    assert watch.longest.seconds == pytest.approx(6.0)


def echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def echo(c: socket.socket = conn) -> None:
                with c, contextlib.suppress(OSError):  # the proxy resets it
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` through a new connection; what came back (b"" if it was reset)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(2)
            s.sendall(payload)
            return s.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_the_proxy_passes_resets_uploads_or_everything():
    server, port = echo_server()
    proxy = FaultProxy(port)
    try:
        assert exchange(proxy.port, b"PUT /bucket/a HTTP/1.1\r\n") == b"PUT /bucket/a HTTP/1.1\r\n"
        proxy.mode = "reset_writes"
        proxy.write_prefix = "/bucket/artifacts/"
        assert exchange(proxy.port, b"PUT /bucket/datasets/a HTTP/1.1\r\n") != b""
        proxy.write_prefix = "/"
        assert exchange(proxy.port, b"GET /bucket/a HTTP/1.1\r\n") == b"GET /bucket/a HTTP/1.1\r\n"
        assert exchange(proxy.port, b"PUT /bucket/a HTTP/1.1\r\n") == b""
        proxy.mode = "reset"
        assert exchange(proxy.port, b"GET /bucket/a HTTP/1.1\r\n") == b""
        assert proxy.resets == 2
        proxy.mode = "pass"
        time.sleep(0.05)
        assert exchange(proxy.port, b"GET / HTTP/1.1\r\n") == b"GET / HTTP/1.1\r\n"
    finally:
        proxy.close()
        server.close()
