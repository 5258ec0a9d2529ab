"""UC Software 4.0 on SoundPoint IP: as SIP 3.x, plus the web UI reboot (/form-submit/Reboot) as a per-phone choice."""
from __future__ import annotations

from fleet.phones.soundpoint import SoundPointControl


class Control(SoundPointControl):
    pass
