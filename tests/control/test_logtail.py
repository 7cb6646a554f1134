"""Worker log files read for FollowLogs: whole-line tails and cursors that follow a growing file."""

from __future__ import annotations

from pathlib import Path

from vastrpc.control.logtail import MAX_LINE, READ_CHUNK, LogCursor, pieces, read_tail


def test_read_tail_returns_whole_lines_and_where_to_follow_from(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes(b"one\ntwo\nthree\npart")
    assert read_tail(log, None) == (b"one\ntwo\nthree\n", 14)  # the unfinished line is left to the cursor
    assert read_tail(log, 2) == (b"two\nthree\n", 14)
    assert read_tail(log, 0) == (b"", 14)
    assert read_tail(tmp_path / "missing.log", None) == (b"", 0)
    # A limit that cuts a line starts at the next whole one.
    assert read_tail(log, None, limit=10) == (b"three\n", 14)


def test_cursor_returns_new_lines_holds_partial_ones_and_restarts_on_truncation(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    cursor = LogCursor(log)
    assert cursor.read() == b""  # not written yet
    log.write_bytes(b"a\nb")
    assert cursor.read() == b"a\n"
    assert cursor.read() == b""  # nothing new: just a stat
    with log.open("ab") as f:
        f.write(b"c\nd")
    assert cursor.read() == b"bc\n"
    assert cursor.read(final=True) == b"d"  # the writer stopped: its last line as it is
    log.write_bytes(b"new\n")  # replaced by a shorter file
    assert cursor.read() == b"new\n"


def test_cursor_reads_in_bounded_chunks_and_sends_an_overlong_line(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes((b"x" * 99 + b"\n") * (READ_CHUNK // 50))  # twice a chunk
    cursor = LogCursor(log)
    first = cursor.read()
    assert 0 < len(first) <= READ_CHUNK and first.endswith(b"\n")
    rest = cursor.read() + cursor.read()
    assert len(first) + len(rest) == log.stat().st_size
    long = tmp_path / "long.log"
    long.write_bytes(b"y" * (MAX_LINE + 10))
    assert len(LogCursor(long).read()) == MAX_LINE + 10  # no newline coming: not held forever


def test_pieces_cut_after_newlines() -> None:
    assert list(pieces(b"ab\ncd\nef", size=4)) == [b"ab\n", b"cd\n", b"ef"]
    assert list(pieces(b"abcdefgh", size=3)) == [b"abc", b"def", b"gh"]
    assert list(pieces(b"", size=3)) == []
