"""A push reads each boot-server file once per task (fleet.drivers.publish.read_once), and sees its own writes."""
from __future__ import annotations

from fleet.drivers.publish.read_once import ReadOnce


class _Counting:
    """A boot directory in memory that counts the requests a publisher would send."""

    name = "boot server (memory)"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests, self.closed = dict(files), [], False

    def read(self, filename: str) -> bytes | None:
        self.requests.append(("GET", filename))
        return self.files.get(filename)

    def write(self, filename: str, data: bytes) -> None:
        self.requests.append(("PUT", filename))
        self.files[filename] = data

    def delete(self, filename: str) -> None:
        self.requests.append(("DELETE", filename))
        self.files.pop(filename, None)

    def close(self) -> None:
        self.closed = True


def test_a_file_read_twice_is_asked_for_once_and_an_absent_one_too():
    inner = _Counting({"0004f2000001.cfg": b"<master/>"})
    pub = ReadOnce(inner)
    assert pub.read("0004f2000001.cfg") == b"<master/>"
    assert pub.read("0004f2000001.cfg") == b"<master/>"
    assert pub.read("0004f2000001-web.cfg") is None
    assert pub.read("0004f2000001-web.cfg") is None
    assert inner.requests == [("GET", "0004f2000001.cfg"), ("GET", "0004f2000001-web.cfg")]


def test_a_read_after_a_write_or_delete_sees_it_without_asking():
    inner = _Counting({"a.cfg": b"old"})
    pub = ReadOnce(inner)
    assert pub.read("a.cfg") == b"old"
    pub.write("a.cfg", b"new")
    assert pub.read("a.cfg") == b"new"
    pub.delete("a.cfg")
    assert pub.read("a.cfg") is None
    pub.close()
    assert inner.requests == [("GET", "a.cfg"), ("PUT", "a.cfg"), ("DELETE", "a.cfg")] and inner.closed


def test_a_write_that_fails_leaves_the_file_unknown():
    """The server may hold the old or the new content after a failed write: the next read asks it."""
    class _Failing(_Counting):
        def write(self, filename: str, data: bytes) -> None:
            self.requests.append(("PUT", filename))
            raise OSError("connection reset")

    inner = _Failing({"a.cfg": b"old"})
    pub = ReadOnce(inner)
    assert pub.read("a.cfg") == b"old"
    try:
        pub.write("a.cfg", b"new")
    except OSError:
        pass
    assert pub.read("a.cfg") == b"old"
    assert inner.requests == [("GET", "a.cfg"), ("PUT", "a.cfg"), ("GET", "a.cfg")]
