"""JSON from a device, parsed so that no answer can escape as anything but ValueError.

`json.loads` raises RecursionError (not a ValueError) for an answer nested deeper than the interpreter's recursion
limit: a 10 kB `[[[[...]]]]` is enough. A caller that catches ValueError for "malformed" would let that one through
and crash its worker or collector loop, so every parser of a device's JSON goes through `device_json`.
"""
from __future__ import annotations

import json


def device_json(raw: bytes | str) -> object:
    """The parsed answer; ValueError for anything that is not JSON, including nesting too deep to parse."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("answer nested too deeply to parse") from None
    except UnicodeDecodeError:
        raise ValueError("answer is not UTF-8 text") from None
