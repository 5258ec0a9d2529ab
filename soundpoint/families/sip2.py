"""SIP 2.x on SoundPoint IP (the seed bulletin's firmware; Technical Bulletin 5844 is for SIP 2.1 and later).

Sources: SoundPoint IP SIP 2.x Administrator's Guide (SIP 2.2: voIpProt.SIP.requestValidation.* on page A-14);
polycom.md "Firmware families" and "More facts".
No web-application interfaces (telephone notification and state polling arrived with SIP 3.1),
syslog only from the bootROM, no failover controls beyond the server list. The web UI's reboot form
path is documented for UC Software 4.x only, so check-sync is the one reboot fleet uses.
"""
from soundpoint.families import params
from soundpoint.families.profile import CHECK_SYNC, LOG_UPLOAD, SYSLOG_BOOTROM, WEB_UI, Family

# Models that can run SIP 2.x (ceilings from release notes: IP 300/500 stop at SIP 2.1; floors *uncertain*).
MODELS = frozenset(
    [f"SoundPoint IP {n}" for n in (300, 301, 320, 330, 430, 500, 501, 550, 600, 601, 650)]
    + ["SoundStation IP 4000"])

FAMILY = Family(
    name="sip-2.x", title="SoundPoint IP SIP 2.x",
    catalogue=tuple(params.server() + params.registration() + params.outbound_proxy_global()
                    + params.check_sync() + params.request_validation("SIP 2.2 admin guide, appendix A-14")),
    expires_min=300,            # printed minimum in the SIP 1.x-3.x guides
    interfaces=frozenset({CHECK_SYNC, WEB_UI, SYSLOG_BOOTROM, LOG_UPLOAD}),
    reboot_methods=("check-sync",),
    models=MODELS,
    failover_controls=False,
    max_registrations=6,        # IP 600/601/650: 6 (SIP 2.2 guide); fewer on smaller models
    notes=("no call state: a call check cannot tell, so phones are deferred (fail closed)",
           "registration state only from the uploaded application log and bootROM-configured syslog"),
)
