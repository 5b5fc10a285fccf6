"""The query log with real files, a full disk (/dev/full) and a FIFO nobody reads."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from heimdall.querylog import QueryLog, wire_to_text


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def read_lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_lines_are_written_as_json_with_every_field(tmp_path):
    path = tmp_path / "q.log"
    ql = QueryLog(str(path), flush_interval=0.05, batch_size=100).start()
    for i in range(250):
        ql.log("192.0.2.1", b"\x03www\x07Example\x04test\x00", 1, 0, 0.000081, cached=True, ts=1000.0 + i)
    ql.log("2001:db8::1", "blocked.example.", 28, 3, 0.0123, blocked=True, protocol="tcp")
    assert ql.close()
    lines = read_lines(path)
    assert len(lines) == 251 and ql.written == 251 and ql.dropped == 0
    assert lines[0] == {"ts": 1000.0, "client": "192.0.2.1", "protocol": "udp", "name": "www.Example.test.",
                        "type": "A", "rcode": "NOERROR", "ms": 0.081, "cached": True, "blocked": False}
    assert [x["ts"] for x in lines[:250]] == [1000.0 + i for i in range(250)]   # order kept
    assert lines[-1]["type"] == "AAAA" and lines[-1]["rcode"] == "NXDOMAIN" and lines[-1]["blocked"]


def test_flushes_on_time_without_close(tmp_path):
    path = tmp_path / "q.log"
    ql = QueryLog(str(path), flush_interval=0.05, batch_size=1000).start()
    try:
        ql.log("192.0.2.1", "a.example.", 1, 0, 0.001)
        wait_until(lambda: path.exists() and len(read_lines(path)) == 1, 5)
        ql.log("192.0.2.1", "b.example.", 1, 0, 0.001)
        wait_until(lambda: len(read_lines(path)) == 2, 5)
    finally:
        ql.close()


def test_full_batch_wakes_the_writer_before_the_interval(tmp_path):
    path = tmp_path / "q.log"
    ql = QueryLog(str(path), flush_interval=30, batch_size=50).start()
    try:
        for _ in range(50):
            ql.log("192.0.2.1", "a.example.", 1, 0, 0.001)
        wait_until(lambda: path.exists() and len(read_lines(path)) == 50, 5)
    finally:
        ql.close()


def test_full_disk_keeps_serving_logs_once_and_counts_drops(caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    ql = QueryLog("/dev/full", flush_interval=0.02, batch_size=10).start()
    with caplog.at_level(logging.ERROR, logger="heimdall.querylog"):
        for _ in range(5):
            for _ in range(10):
                ql.log("192.0.2.1", "a.example.", 1, 0, 0.001)
            time.sleep(0.05)
        assert ql.close()
    assert ql.dropped == 50 and ql.written == 0
    assert caplog.text.count("dropping lines") == 1
    assert "No space left on device" in caplog.text


def test_unwritable_path_is_not_fatal(tmp_path):
    ql = QueryLog(str(tmp_path / "no" / "such" / "dir" / "q.log"), flush_interval=0.02).start()
    ql.log("192.0.2.1", "a.example.", 1, 0, 0.001)
    assert ql.close()
    assert ql.dropped == 1


def test_flood_against_a_stuck_writer_stays_bounded(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ql = QueryLog(str(fifo), flush_interval=0.01, batch_size=100, max_buffer=1000).start()
    total = 20_000
    t = time.perf_counter()
    for i in range(total):                       # the writer is stuck opening a FIFO without a reader
        ql.log("192.0.2.1", "flood.example.", 1, 0, 0.001, ts=float(i + 1))
        assert ql.pending() <= 1000
    per_call = (time.perf_counter() - t) / total
    assert per_call < 100e-6                      # log() never waited for the writer (it would wait for good)
    assert ql.dropped >= total - 1000 - 100      # at most the buffer and one taken batch survive

    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(open(fifo).read().splitlines()))
    reader.start()                                # now the open completes and the backlog drains
    assert ql.close(10)
    reader.join(10)
    assert len(got) == ql.written and ql.written + ql.dropped == total
    assert json.loads(got[0])["name"] == "flood.example."


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "q.log"
    ql = QueryLog(str(path), flush_interval=0.02).start()
    try:
        ql.log("192.0.2.1", "one.example.", 1, 0, 0.001)
        wait_until(lambda: path.exists() and len(read_lines(path)) == 1)
        os.rename(path, tmp_path / "q.log.1")
        ql.reopen()
        ql.log("192.0.2.1", "two.example.", 1, 0, 0.001)
        wait_until(lambda: path.exists() and len(read_lines(path)) == 1)
        assert read_lines(path)[0]["name"] == "two.example."
        assert read_lines(tmp_path / "q.log.1")[0]["name"] == "one.example."
    finally:
        ql.close()


def test_wire_to_text():
    assert wire_to_text(b"\x03www\x07example\x00") == "www.example."
    assert wire_to_text(b"\x00") == "."


def _write_many(path: str, tag: str, n: int) -> None:
    ql = QueryLog(path, flush_interval=0.001, batch_size=37).start()
    for i in range(n):
        ql.log("192.0.2.1", f"{tag}-{i}.example.", 1, 0, 0.001)
        if i % 500 == 0:
            time.sleep(0.001)
    assert ql.close(30)


def test_several_worker_processes_share_one_file_without_torn_lines(tmp_path):
    import multiprocessing as mp
    path = str(tmp_path / "shared.log")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, f"w{k}", 5000)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = read_lines(path)                     # every line parses: none was torn
    assert len(lines) == 15000
    for k in range(3):
        mine = [x["name"] for x in lines if x["name"].startswith(f"w{k}-")]
        assert mine == [f"w{k}-{i}.example." for i in range(5000)]
