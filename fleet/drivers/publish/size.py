"""How much of one file a publisher reads from the boot server: the server is on the network, what it sends is
untrusted input, and a task that read whatever arrived could be made to hold gigabytes (an endless HTTP body, a
huge file planted under a phone's name).

A push reads a phone's master, its override files and the files it replaces (for their backups): configuration
files of kilobytes, a few hundred kB for a whole sip.cfg. MAX_FILE_BYTES is far above any of them; a longer file is
refused with its name and the bound, before anything is written.
"""
from __future__ import annotations

from fleet.drivers.errors import DeviceRefused
from fleet.drivers.publish.names import shown

MAX_FILE_BYTES = 16 * 1024 * 1024


def too_long(publisher: str, name: str) -> DeviceRefused:
    return DeviceRefused(publisher, f"{shown(name)} is longer than {MAX_FILE_BYTES} bytes: fleet reads no more of a "
                                    "file from the boot server (a configuration file is a few kB); nothing was written")
