"""node/logs.py's relay and log files, on a pipe: lines written in pieces,
a line left open, task markers, progress reports, cutting one task's lines."""
from __future__ import annotations

import os

from shoal.node.logs import StreamRelay, read_output, task_output


def relay_into(tmp_path, pieces, eof=False):
    r, w = os.pipe()
    os.set_blocking(r, False)
    path = tmp_path / "worker-1.out"
    shown = []
    relay = StreamRelay(r, 1, False, lambda err, text, job: shown.append((job, text)),
                        open(path, "ab"))
    for piece in pieces:
        os.write(w, piece)
        relay.read()
    if eof:
        os.close(w)
        relay.drain()
    else:
        os.close(w)
    relay.close_log()
    os.close(r)
    return path.read_bytes(), "".join(text for _, text in shown), shown


def test_pieces_of_lines_reach_the_log_once(tmp_path):
    data, shown, _ = relay_into(tmp_path, [b"speaker says", b" ", b"hello", b"\n", b"ne",
                                        b"xt\n"])
    assert data == b"speaker says hello\nnext\n"
    assert shown == "(worker pid=1) speaker says hello\n(worker pid=1) next\n"


def test_a_line_left_open_is_in_the_log_at_once(tmp_path):
    data, shown, _ = relay_into(tmp_path, [b"\x1bshoal-task:aa - f\nlast words"])
    assert data == b"\x1bshoal-task:aa - f\nlast words"
    assert task_output(data, b"aa") == b"last words\n"
    assert shown == ""                   # the terminal waits for the end of the line


def test_markers_and_progress_reports(tmp_path):
    data, shown, _ = relay_into(tmp_path, [
        b"\x1bshoal-label:f\n\x1bshoal-task:aa 01 f\none\n",
        b'\x1bshoal-progress:{"id": "x", "name": "n", "n": 1}\n',
        b"\x1bshoal-task:bb - g\ntwo\n"], eof=True)
    assert b"shoal-label" not in data and b"shoal-progress" not in data
    assert task_output(data, b"aa") == b"one\n" and task_output(data, b"bb") == b"two\n"
    assert "(f pid=1) one" in shown and "(g pid=1) two" in shown
    assert '\x1bshoal-progress:{"id": "x"' in shown      # passed on to drivers as is


def test_read_output_from_an_offset_without_markers(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"\x1bshoal-task:aa - f\nfirst\n\x1bshoal-task:bb - f\nsecond\n")
    text, offset = read_output(str(path), 0)
    assert text == "first\nsecond\n"
    assert read_output(str(path), offset) == ("", offset)
    assert read_output(str(path), 0, "bb") == ("second\n", 7)
    assert read_output(str(tmp_path / "missing"), 0) == ("", 0)


def test_each_piece_of_output_goes_with_its_tasks_job(tmp_path):
    """Lines of two jobs' tasks read at once are handed over apart, each
    with its job (the node shows them only to that job's driver)."""
    _, _, shown = relay_into(tmp_path, [
        b"\x1bshoal-task:aa 0a0b f\none\ntwo\n\x1bshoal-task:bb 0c0d g\nthree\n"
        b"\x1bshoal-task:cc - h\nfour\n"], eof=True)
    assert shown == [(bytes.fromhex("0a0b"), "(f pid=1) one\n(f pid=1) two\n"),
                     (bytes.fromhex("0c0d"), "(g pid=1) three\n"),
                     (None, "(h pid=1) four\n")]
