"""`--fleet-lab LABFILE`: the virtual lab for one test session, started and stopped as a user would, by `hil`.

fleet never imports the lab (hil/): it runs `hil up LABFILE --inventory-out FILE` in a subprocess, reads the
inventory that writes, and runs `hil down` at the end of the session. `hil` is looked up beside the running
Python (a virtualenv's bin/), then on the PATH.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

UP_TIMEOUT_S = 300.0
DOWN_TIMEOUT_S = 60.0


class LabStartError(RuntimeError):
    """`hil up` failed; the message carries its exit code and its last words."""


def hil_command() -> list[str]:
    beside = Path(sys.executable).parent / "hil"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("hil")
    if found is None:
        raise LabStartError("--fleet-lab needs the `hil` command (pip install soundpoint-fleet): not found beside "
                            f"{sys.executable} nor on the PATH")
    return [found]


@dataclass
class SessionLab:
    """A lab started with `hil up` into `state` (its control file, keys, secrets) and the inventory it wrote."""
    labfile: Path
    state: Path
    inventory: Path

    def up(self, ready_timeout: float = 120.0) -> "SessionLab":
        self.state.mkdir(parents=True, exist_ok=True)
        args = hil_command() + ["up", str(self.labfile), "--state-dir", str(self.state),
                                "--inventory-out", str(self.inventory), "--ready-timeout", str(ready_timeout)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=ready_timeout + UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.down()
            raise LabStartError(f"hil up {self.labfile}: no answer within {ready_timeout + UP_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            self.down()
            words = (done.stderr or done.stdout).strip()[-1500:]
            raise LabStartError(f"hil up {self.labfile} exited {done.returncode}: {words}")
        return self

    def down(self) -> None:
        """`hil down` (a lab that never came up is fine: nothing to stop)."""
        if (self.state / "control.json").exists() or any(self.state.glob("*")):
            subprocess.run(hil_command() + ["down", "--state-dir", str(self.state)], capture_output=True,
                           timeout=DOWN_TIMEOUT_S, check=False)
