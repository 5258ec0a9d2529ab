"""UC Software 5.x on VVX and Trio (no SoundPoint IP runs it).

Sources: UC Software 5.x Administrator's Guides (failover controls, device.*), REST API reference 5.9
(`apps.restapi.enabled`, safeRestart, callStatus, one request at a time per phone); polycom.md "More facts".
"""
from soundpoint.families import params
from soundpoint.families.profile import (CHECK_SYNC, LOG_UPLOAD, REST, STATE_POLLING, SYSLOG_CONFIG, TEL_NOTIFICATION,
                                         WEB_REBOOT, WEB_UI, Family)

MODELS = frozenset(
    [f"VVX {n}" for n in (101, 150, 201, 250, 300, 301, 310, 311, 350, 400, 401, 410, 411, 450, 500, 501, 600, 601, 1500)]
    + ["Trio 8300", "Trio 8500", "Trio 8800", "Trio C60"])

FAMILY = Family(
    name="uc-5.x", title="UC Software 5.x (VVX, Trio)",
    catalogue=tuple(params.server("UC 5.x guide") + params.uc_failover() + params.registration()
                    + params.outbound_proxy_global() + params.outbound_proxy_per_line()
                    + params.use_outbound_proxy() + params.check_sync() + params.request_validation()
                    + params.web_apps() + params.device() + params.rest()),
    expires_min=10,             # reg.x.server.y.expires "positive integer, minimum 10" (UC Software guide; see uc-4.0)
    interfaces=frozenset({CHECK_SYNC, WEB_UI, WEB_REBOOT, TEL_NOTIFICATION, STATE_POLLING, SYSLOG_CONFIG, LOG_UPLOAD,
                          REST}),
    reboot_methods=("rest", "check-sync", "web"),
    models=MODELS,
    live_params=r"reg\.\d+\.",   # *unconfirmed*: see Family.live_params
    failover_controls=True,
    max_registrations=34,
    notes=("REST serves one request at a time: fleet never sends two at once to a phone",),
)
