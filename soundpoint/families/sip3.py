"""SIP 3.x on SoundPoint IP and SoundStation IP.

Sources: SoundPoint IP SIP 3.0/3.1 Administrator's Guides; Web Application for Polycom Phones
(telephone notification, state polling from SIP 3.1); polycom.md "More facts" (firmware ceilings,
syslog in the bootROM on SIP 3.x). No failover controls: failed registrations are retried
"typically at intervals of 30 to 60 seconds" (seed).
"""
from soundpoint.families import params
from soundpoint.families.profile import (CHECK_SYNC, LOG_UPLOAD, STATE_POLLING, SYSLOG_BOOTROM, TEL_NOTIFICATION,
                                         WEB_UI, Family)

# IP 300/500 stop at SIP 2.1; everything else of the SoundPoint line reaches SIP 3.x (floors *uncertain*).
MODELS = frozenset(
    [f"SoundPoint IP {n}" for n in (301, 320, 321, 330, 331, 335, 430, 450, 501, 550, 560, 600, 601, 650, 670)]
    + [f"SoundStation IP {n}" for n in (4000, 6000, 7000)])

FAMILY = Family(
    name="sip-3.x", title="SoundPoint IP SIP 3.x",
    catalogue=tuple(params.server() + params.registration() + params.outbound_proxy_global()
                    + params.outbound_proxy_per_line() + params.check_sync() + params.request_validation()
                    + params.web_apps()),
    expires_min=300,
    interfaces=frozenset({CHECK_SYNC, WEB_UI, TEL_NOTIFICATION, STATE_POLLING, SYSLOG_BOOTROM, LOG_UPLOAD}),
    reboot_methods=("check-sync",),
    models=MODELS,
    failover_controls=False,
    max_registrations=34,       # with expansion modules (IP 650/670)
    notes=("syslog server only from the bootROM: fleet cannot switch syslog on",
           "telephone notification and state polling from SIP 3.1 on (uncertain for 3.0)"),
)
