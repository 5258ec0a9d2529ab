"""UC Software 4.0.x on the SoundPoint IP models that reach it (IP 321/331/335/450/550/560/650/670).

Sources: UC Software 4.0 Administrator's Guide (device.* with device.set and `.set` companions, template
names, <MAC>-web.cfg); polycom.md "More facts": web UI reboot `/form-submit/Reboot` on UC Software 4.x
(Basic auth, realm "SPIP Configuration"), failover controls only from UC Software 4.1.6 on, which
no SoundPoint IP reaches, so this family has none of them. No REST API on any SoundPoint IP.
"""
from soundpoint.families import params
from soundpoint.families.profile import (CHECK_SYNC, LOG_UPLOAD, STATE_POLLING, SYSLOG_CONFIG, TEL_NOTIFICATION,
                                         WEB_REBOOT, WEB_UI, Family)

MODELS = frozenset([f"SoundPoint IP {n}" for n in (321, 331, 335, 450, 550, 560, 650, 670)]
                   # SoundStation IP 5000/6000/7000 on UC Software 4.0: *uncertain*
                   + [f"SoundStation IP {n}" for n in (5000, 6000, 7000)])

FAMILY = Family(
    name="uc-4.0", title="UC Software 4.0 (SoundPoint IP)",
    catalogue=tuple(params.server("UC 4.0 guide") + params.registration() + params.outbound_proxy_global()
                    + params.outbound_proxy_per_line() + params.use_outbound_proxy() + params.check_sync()
                    + params.request_validation() + params.web_apps() + params.device()),
    # printed: reg.x.server.y.expires "positive integer, minimum 10" (Polycom UC Software Administrator's Guide,
    # Registration Server Parameters table, reg.x.server.y.expires row; the SIP 2.x-3.x guides print 300)
    expires_min=10,
    interfaces=frozenset({CHECK_SYNC, WEB_UI, WEB_REBOOT, TEL_NOTIFICATION, STATE_POLLING, SYSLOG_CONFIG, LOG_UPLOAD}),
    reboot_methods=("check-sync", "web"),
    models=MODELS,
    live_params=r"reg\.\d+\.",   # *unconfirmed*: see Family.live_params
    failover_controls=False,
    max_registrations=34,       # with expansion modules (IP 650/670)
    notes=("no failBack modes, reRegisterOn or registerRetry (UC Software 4.1.6 and later)",
           "web UI reboot path documented for 4.x only"),
)
