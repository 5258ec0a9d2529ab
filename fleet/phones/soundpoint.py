"""Controls every Polycom family shares: state polling call check, check-sync and web UI reboots, reboot evidence.

The family modules (sip2, sip3, ucs4, ucs5) subclass this and change what their
firmware does differently.
"""
from __future__ import annotations

import time
from typing import Collection

from soundpoint import families
from soundpoint.conformance import version_in

from fleet.drivers.control import polling, sip_notify, web_ui
from fleet.drivers.control.call_check import refused as refused_check
from fleet.drivers.errors import AuthRefused, DeviceRefused, DriverError
from fleet.config.inventory import Credentials
from fleet.phones import Announce, CallCheck, Identity, PhoneAccess, identity_failure, same_mac, shown

ALWAYS_REBOOT = "voIpProt.SIP.specialEvent.checkSync.alwaysReboot"
REBOOT_DESCRIPTIONS = {"check-sync": "sip check-sync", "web": "web /form-submit/Reboot", "rest": "rest safeRestart"}


class SoundPointControl:
    def __init__(self, access: PhoneAccess) -> None:
        self.access = access
        self.phone = access.phone
        self.family: families.Family = access.phone.family
        self._reboot_seen_at: float | None = None   # what the last rebooted_since saw (reboot_seen_at)
        self._reboot_answered_at: float | None = None   # when the phone answered the last reboot (reboot_answered_at)

    # ------------------------------------------------------------ call state
    def polling_credentials(self) -> Credentials:
        """State polling has its own login (apps.statePolling.username/password); without one in the inventory the
        admin login is tried (a real phone refuses it: the call check says `refused`, naming that login)."""
        user = self.access.param("apps.statePolling.username")
        if user:
            return Credentials(username=user, password=self.access.secret("apps.statePolling.password"))
        return self.access.creds

    def polling_mode(self) -> polling.ResponseMode:
        """Where this phone's state polling answer goes (requestor, push or none), from its effective parameters."""
        return polling.response_mode(self.access.params)

    def call_check(self) -> CallCheck:
        if self.family.call_state_source is None:
            return CallCheck("unknown", f"{self.family.name} cannot report call state")
        mode = self.polling_mode()
        if mode == "none":
            return CallCheck("unknown", f"state polling: {polling.NOT_SENT}")
        try:
            if mode == "push":
                return polling.pushed_call_state(self.phone, self.polling_credentials(), self.access.store)
            active = polling.polling_in_call(self.phone, self.polling_credentials(), digest_only=True)
        except AuthRefused as exc:
            return refused_check(f"{self._polling_login()} (state polling)", exc)
        except DriverError as exc:
            return CallCheck("unknown", f"state polling: {exc.message}")
        return CallCheck("in-call", "state polling, requestor mode") if active else CallCheck("idle")

    # ------------------------------------------------------------ identity
    def _polling_login(self) -> str:
        """Which login state polling is asked with, for a report (never the login itself)."""
        if self.access.param("apps.statePolling.username"):
            return "the apps.statePolling login"
        return "the admin login (no apps.statePolling.username in the inventory)"

    def identify(self, timeout: float = 5.0) -> Identity:
        """State polling's device handler, digest with the polling login, as a call check asks (SIP 3.x, UC 4.0)."""
        method = f"state polling GET {polling.DEVICE_PATH} (digest, {self._polling_login()})"
        pushed = self.polling_mode() == "push"
        try:
            info = polling.device_information(self.phone, self.polling_credentials(), timeout, pushed=pushed)
        except DriverError as exc:
            return identity_failure(method, exc)
        if info is None:
            listed = self.phone.firmware_version
            return Identity(method, "", "login accepted; the answer goes to apps.statePolling.URL, so the phone's "
                                        "identity is not read here" + (f" (nor its firmware checked against the "
                                                                        f"inventory's {listed})" if listed else ""))
        firmware = info.get("AppLoadID", "")
        found = self._identity(method, info.get("MACAddress", ""), info.get("ModelNumber", "?"), firmware or "?")
        return self._firmware_checked(found, firmware)

    def _firmware_checked(self, found: Identity, reported: str) -> Identity:
        """The phone answered as itself: a firmware version other than the inventory's `firmware_version` (a prefix
        match, "5.3" covers 5.3.0.1234) is the row's problem, reported and never guessed, whichever interface read it
        (REST device/info, state polling's AppLoadID). A phone that names no version is not compared."""
        listed = self.phone.firmware_version
        if not (found.ok and listed and reported):
            return found
        try:
            same = version_in(reported, listed)
        except ValueError:       # an AppLoadID with no version in it is not the listed version either
            same = False
        if same:
            return found
        return Identity(found.method, "error-status", f"{found.detail}: firmware mismatch, the inventory says {listed}",
                        found.firmware)

    def _identity(self, method: str, mac: str, model: str, firmware: str) -> Identity:
        """What the phone said it is, against the inventory: another MAC at this address is the wrong device."""
        said = f"{shown(model)}, firmware {shown(firmware)}"
        if not mac:
            return Identity(method, "malformed", f"the answer names no MAC address ({said})")
        if not same_mac(mac, self.phone.mac):
            return Identity(method, "wrong-device", f"the phone at {self.phone.address} is {shown(mac, 20)!r} ({said})")
        return Identity(method, "", said, firmware if firmware != "?" else "")

    # ------------------------------------------------------------ reboot
    def falls_back_to_web(self) -> bool:
        """A refused check-sync is followed by a web UI reboot (UC Software 4.x) only where the inventory did not
        choose the method: an explicit `reboot: check-sync` fails instead."""
        return (self.phone.reboot is None and self.phone.reboot_method == "check-sync"
                and "web" in self.family.reboot_methods)

    def reboot(self, announce: Announce | None = None, fallback: bool = True) -> str:
        method = self.phone.reboot_method
        if method not in self.family.reboot_methods:
            raise DriverError(f"phone {self.phone.mac} ({self.phone.address})",
                              f"reboot by {method} is not available on {self.family.name}")
        tell = announce or (lambda _method: None)
        self._reboot_answered_at = None
        try:
            tell(method)
            getattr(self, "_reboot_" + method.replace("-", "_"))()
        except DeviceRefused as exc:
            if not (fallback and self.falls_back_to_web()):
                raise
            # announced before it is sent: a task lost after this point may have rebooted the phone through the web
            # UI, which a second check-sync (and its fallback) would repeat
            tell("web")
            self._reboot_web()
            return f"{REBOOT_DESCRIPTIONS['web']} (check-sync refused: {exc.message})"[:300]
        return REBOOT_DESCRIPTIONS[method]

    def reboot_answered_at(self) -> float | None:
        """When the phone's answer to the last reboot request arrived (read by the driver, before any lock's
        release or parse): a phone answers, then goes down, so a registration from before it cannot be the
        phone coming back (fleet.rollout.work._reboot_left)."""
        return self._reboot_answered_at

    def _reboot_check_sync(self) -> None:
        user = self.access.param("reg.1.address").split("@")[0] or None
        auth_user = self.access.param("reg.1.auth.userId") or (user or "")
        password = self.access.secret("reg.1.auth.password")
        sip_notify.check_sync_blocking(self.phone, user=user, auth=(auth_user, password) if password else None)
        self._reboot_answered_at = time.time()

    def _reboot_web(self) -> None:
        web_ui.reboot(self.phone, self.access.creds)
        self._reboot_answered_at = time.time()

    def _reboot_rest(self) -> None:
        raise DriverError(f"phone {self.phone.mac}", f"{self.family.name} has no REST API")

    # ------------------------------------------------------------ evidence
    def maybe_sent(self, tried: Collection[str] | None) -> set[str]:
        """The methods a lost reboot may have gone out by: those announced, or, where nobody recorded them, the
        phone's method and its fallback."""
        if tried is not None:
            return set(tried)
        return {self.phone.reboot_method} | ({"web"} if self.falls_back_to_web() else set())

    def reports_shutdown(self, params: dict[str, str]) -> bool:
        """The phone sends a line unregistration event as it shuts down (telephone notification events, to a URL
        fleet's collector reads): a reboot leaves a `line_down_at` in the store, and its absence means none."""
        return bool(families.TEL_NOTIFICATION in self.family.interfaces and params.get("apps.telNotification.URL")
                    and params.get("apps.telNotification.lineRegistrationEvent", "1") != "0"
                    and self.access.store is not None)

    def may_stay_up(self, sent: Collection[str], params: dict[str, str]) -> bool:
        """Whether the phone may take the pushed files without a reboot: a check-sync alone with alwaysReboot=0
        (the default) reboots only when a change needs it, and UC Software applies reg.x.* live ("Change Causes
        Restart: No"). Verification then rests on a registration after the push, never on a reboot."""
        return set(sent) == {"check-sync"} and params.get(ALWAYS_REBOOT, "0") != "1"

    def reboot_seen_at(self) -> float | None:
        """After rebooted_since said True: when the phone was seen going down (its shutdown event), if it was."""
        return self._reboot_seen_at

    def rebooted_since(self, since: float, params: dict[str, str], tried: Collection[str] | None = None) -> bool:
        """SoundPoint phones have no uptime to ask for. Nothing announced: nothing was sent. Where the phone sends
        events, the evidence is the line unregistration event it sends as it shuts down, or the line registration event
        it sends once it is back (a fresh registration), whatever rebooted it.
        Without events: a check-sync alone is idempotent unless alwaysReboot=1 (a phone already running the new
        files ignores a second one), so we answer False and let it be sent again; a web UI reboot (chosen, or the
        fallback after a refused check-sync) or an always-rebooting check-sync is not, so we answer True: better a
        phone that fails verification than one rebooted twice."""
        sent = self.maybe_sent(tried)
        if not sent:
            return False
        if self.reports_shutdown(params):
            # the unregistration it sends as it shuts down, or the fresh line registration it sends once it is back
            state = self.access.store.phone_state(self.phone.mac)
            if (state.line_down_at or 0.0) > since:
                self._reboot_seen_at = state.line_down_at
            return max(state.line_down_at or 0.0, getattr(state, "line_up_at", None) or 0.0) > since
        idempotent = (sent == {"check-sync"}
                      and params.get(ALWAYS_REBOOT, "0") != "1")
        return not idempotent
