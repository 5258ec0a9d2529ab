"""SIP 3.x: state polling (digest, its own credentials, or pushed to apps.statePolling.URL), check-sync reboot."""
from __future__ import annotations

from fleet.phones.soundpoint import SoundPointControl


class Control(SoundPointControl):
    pass
