"""Worker output: whole prefixed lines, bounded memory, never a blocking write."""

from __future__ import annotations

import os

from supervisor import _output
from supervisor._output import Sink, Splitter


def test_lines_are_prefixed_whole_and_partial_lines_wait_for_their_end() -> None:
    r, w = os.pipe()
    sink = Sink(w)
    a, b = Splitter("a.0", 0, sink), Splitter("b.1", 1, sink)
    a.feed(b"hel")
    b.feed(b"one\ntw")
    a.feed(b"lo\n")
    b.close()
    for fd in {w, sink.fd}:
        os.close(fd)
    assert os.read(r, 4096).decode().splitlines() == ["b.1 | one", "a.0 | hello", "b.1 | tw"]
    os.close(r)


def test_a_reader_that_never_reads_costs_at_most_the_limit(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_output, "LIMIT", 64 * 1024)
    r, w = os.pipe()
    sink = Sink(w)
    writer = Splitter("w.0", 0, sink)
    for _ in range(10_000):
        writer.feed(b"x" * 100 + b"\n")  # about 1 MB into a 64 KiB pipe nobody reads
    assert len(sink.buf) <= 64 * 1024 and sink.dropped > 0
    while os.read(r, 1 << 16):  # the reader wakes up and drains
        sink.flush()
        if not sink.pending:
            break
    writer.feed(b"after\n")
    sink.flush()
    tail = b""
    while sink.pending or not tail.endswith(b"after\n"):
        tail += os.read(r, 1 << 16)
        sink.flush()
    assert b"bytes of worker output dropped]" in tail and tail.endswith(b"w.0 | after\n")
    for fd in {r, w, sink.fd}:
        os.close(fd)


def test_a_line_without_an_end_is_cut_at_the_maximum() -> None:
    r, w = os.pipe()
    sink = Sink(w)
    Splitter("l.0", 0, sink).feed(b"y" * (_output.MAX_LINE + 10))
    data = b""
    while not data.endswith(b"\n"):
        data += os.read(r, 1 << 20)
        sink.flush()
    assert data.startswith(b"l.0 | ") and data.count(b"\n") == 1 and len(data) == len(b"l.0 | ") + _output.MAX_LINE + 1
    for fd in {r, w, sink.fd}:
        os.close(fd)
