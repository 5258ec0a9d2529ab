"""`hil up` waits for the lab process's `ready` file. Two test suites side by side once had it read between
the file's creation and its write: "internal error: JSONDecodeError", and 14 setup errors. The file is now
written whole (renamed into place) and the waiting side treats a file it cannot read as not there yet."""
from __future__ import annotations

import json
import threading

from hil import cli


def test_a_reader_never_sees_the_ready_file_half_written(tmp_path):
    stop = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = (tmp_path / "ready").read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
            except ValueError:
                seen.append(text)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(3000):
            cli._write_ready(tmp_path, {"ok": i % 2 == 0, "phones": i, "error": "x" * (i % 50)})
    finally:
        stop.set()
        t.join(10)
    assert seen == [], f"{len(seen)} reads of a ready file not yet whole, e.g. {seen[:1]!r}"
    assert cli._read_ready(tmp_path) == {"ok": False, "phones": 2999, "error": "x" * (2999 % 50)}
    assert [p.name for p in tmp_path.iterdir()] == ["ready"], "no temporary file left behind"


def test_a_ready_file_not_yet_whole_reads_as_not_there(tmp_path):
    assert cli._read_ready(tmp_path) is None
    (tmp_path / "ready").write_text("")
    assert cli._read_ready(tmp_path) is None
    (tmp_path / "ready").write_text('{"ok": tr')
    assert cli._read_ready(tmp_path) is None
    (tmp_path / "ready").write_text('["not", "a", "document"]')
    assert cli._read_ready(tmp_path) is None
