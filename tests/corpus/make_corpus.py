"""Writes tests/corpus/cases/*.yml and tests/corpus/index.yml from the valid files in base/.

Each case is one valid base file with one thing broken, so that the only error
the CLI can report is the one the index names. Run it after changing a base
file or adding a case (`python tests/corpus/make_corpus.py`); the generated
files are committed, so the corpus can be read and replayed without this script.

Index entry: file, kind (which command validates it), line and field the error
must name, and a fragment of the message.
"""
from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).parent
BASE = {k: (HERE / "base" / f"{k}.yml").read_text() for k in ("inventory", "secrets", "rollout", "experiment", "lab")}

BOMB = """x1: &a1 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]
x2: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1]
x3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2]
x4: &a4 [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3]
x5: &a5 [*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4]
x6: &a6 [*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5]
x7: &a7 [*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6,*a6]
x8: &a8 [*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7,*a7]
x9: &a9 [*a8,*a8,*a8,*a8,*a8,*a8,*a8,*a8,*a8,*a8]
"""

CASES: list[dict] = []


def case(name: str, kind: str, edits, field: str, mark: str | None = None, contains: str = "",
         line: int | None = None, base: str | None = None, raw: bytes | None = None, last: bool = False) -> None:
    """edits: (old, new) replacements on the base text (each old must occur); mark: text on the line the error names."""
    text = BASE[base or kind]
    for old, new in edits:
        assert old in text, f"{name}: {old!r} not in base {base or kind}"
        text = text.replace(old, new, 1)
    if line is None:
        probe = mark if mark is not None else edits[-1][1].strip().splitlines()[0]
        lines = [i + 1 for i, ln in enumerate(text.splitlines()) if probe in ln]
        assert lines, f"{name}: mark {probe!r} not found"
        line = lines[-1] if last else lines[0]
    CASES.append({"file": f"cases/{name}.yml", "kind": kind, "line": line, "field": field, "contains": contains,
                  "_data": raw if raw is not None else text.encode()})


def bytes_case(name: str, kind: str, data: bytes, line: int | None, field: str, contains: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
    CASES.append({"file": f"cases/{name}.yml", "kind": kind, "line": line, "field": field, "contains": contains, "_data": data})


# ------------------------------------------------------------------ inventories
I = "inventory"
P1 = ('      - {mac: "0004f2000002", model: SoundPoint IP 650, address: 127.70.0.12, credentials: phone_admin, '
      'firmware_family: uc-4.0}')
case("inv_duplicate_key", I, [("    gateway: 127.70.0.1\n", "    gateway: 127.70.0.1\n    gateway: 127.70.0.9\n")],
     "sites[0].gateway", mark="gateway: 127.70.0.9", contains="lines 9 and 10")
case("inv_unknown_model", I, [("model: SoundPoint IP 650, address: 127.70.0.12", "model: SoundPoint IP 9999, address: 127.70.0.12")],
     "sites[0].phones[1].model", contains="unknown phone model")
case("inv_garbage_phone_address", I, [("address: 127.70.0.12", "address: not an address!")],
     "sites[0].phones[1].address", contains="neither an IP address nor a host name")
case("inv_phone_address_bad_ip", I, [("address: 127.70.0.12", "address: 999.70.0.12")],
     "sites[0].phones[1].address", contains="not a valid IP address")
case("inv_phone_address_url", I, [("address: 127.70.0.12", 'address: "http://127.70.0.12/"')],
     "sites[0].phones[1].address", contains="neither an IP address")
case("inv_bad_mac", I, [('"0004f2000002"', '"0004f2zz0002"')], "sites[0].phones[1].mac", contains="not a MAC address")
case("inv_mac_as_number", I, [('"0004f2000002"', "000400000002")], "sites[0].phones[1].mac", contains="quote it")
case("inv_duplicate_mac", I, [('mac: "0004f2000101"', 'mac: "00:04:F2:00:00:02"')], "sites[1].phones[0].mac",
     mark='"00:04:F2:00:00:02"', contains="listed twice")
case("inv_duplicate_site", I, [("  - name: branch\n", "  - name: hq\n")], "sites[1].name", mark="  - name: hq",
     last=True, contains="listed twice")
case("inv_site_name_upper", I, [("  - name: branch\n", "  - name: Branch\n")], "sites[1].name", contains="pattern")
case("inv_http_port_zero", I, [("http_port: 8080", "http_port: 0")], "sites[0].phones[0].http_port", mark="http_port: 0")
case("inv_http_port_too_big", I, [("http_port: 8080", "http_port: 70000")], "sites[0].phones[0].http_port", mark="http_port: 70000")
case("inv_http_port_fullwidth", I, [("http_port: 8080", 'http_port: "８０８０"')], "sites[0].phones[0].http_port",
     mark="http_port:", contains="valid integer")
case("inv_http_port_bool", I, [("http_port: 8080", "http_port: true")], "sites[0].phones[0].http_port", mark="http_port: true")
case("inv_http_port_float", I, [("http_port: 8080", "http_port: 8080.0")], "sites[0].phones[0].http_port", mark="http_port: 8080.0")
case("inv_sip_port_string", I, [(P1, P1[:-1] + ', sip_port: "5060"}')], "sites[0].phones[1].sip_port", mark="sip_port")
case("inv_http_port_huge_int", I, [("http_port: 8080", "http_port: " + "9" * 5000)], "", mark="http_port: 9999",
     contains="cannot read this value")
case("inv_dns_without_port", I, [('dns: "127.70.1.53:5353"', 'dns: "127.70.1.53"')], "sites[0].dns", contains="port required")
case("inv_dns_port_zero", I, [('dns: "127.70.1.53:5353"', 'dns: "127.70.1.53:0"')], "sites[0].dns", contains="outside 1-65535")
case("inv_collector_syslog_no_port", I, [('syslog: "127.0.0.1:5514"', 'syslog: "127.0.0.1"')], "sites[0].collector.syslog",
     contains="port required")
case("inv_collector_events_garbage", I, [('events: "127.0.0.1:8514"', 'events: "local host:eighty"')],
     "sites[0].collector.events", contains="host:port")
case("inv_collector_poll_inf", I, [('events: "127.0.0.1:8514"}', 'events: "127.0.0.1:8514", poll_interval: .inf}')],
     "sites[0].collector.poll_interval", contains="finite")
case("inv_collector_poll_nan", I, [('events: "127.0.0.1:8514"}', 'events: "127.0.0.1:8514", poll_interval: .nan}')],
     "sites[0].collector.poll_interval", contains="finite")
case("inv_bad_timezone", I, [("timezone: Europe/Berlin", "timezone: Mars/Olympus_Mons")], "sites[0].timezone",
     contains="unknown time zone")
case("inv_garbage_gateway", I, [("    gateway: 127.70.0.1\n", "    gateway: 127.70.0.1/24\n")], "sites[0].gateway",
     mark="gateway: 127.70.0.1/24")
case("inv_garbage_router_address", I, [("address: 127.70.0.1, port: 2222", "address: 'router; reboot', port: 2222")],
     "sites[0].router.address", mark="router; reboot")
case("inv_unknown_router_driver", I, [("driver: linux_ssh", "driver: telnet")], "sites[0].router.driver")
case("inv_wan_interface_shell", I, [("wan_interface: wan0", "wan_interface: 'wan0; reboot'")], "sites[0].router.wan_interface",
     mark="wan0; reboot")
case("inv_router_timeout_negative", I, [("wan_interface: wan0}", "wan_interface: wan0, timeout: -1}")],
     "sites[0].router.timeout", mark="timeout: -1")
case("inv_boot_url_no_scheme", I, [('url: "http://127.70.0.3:8080/"', 'url: "127.70.0.3:8080/"')], "sites[0].boot_server.url")
case("inv_boot_url_bad_port", I, [('url: "http://127.70.0.3:8080/"', 'url: "http://127.70.0.3:99999/"')],
     "sites[0].boot_server.url", contains="bad port")
case("inv_boot_url_no_host", I, [('url: "ftp://127.71.0.3:2121/"', 'url: "ftp:///srv/"')], "sites[1].boot_server.url",
     contains="no host")
case("inv_provider_garbage", I, [("provider: {name: voip.provider.example, port: 5060}", "provider: {name: voip provider!, port: 5060}")],
     "provider.name", contains="neither an IP address nor a host name")
case("inv_provider_port_zero", I, [("provider: {name: voip.provider.example, port: 5060}", "provider: {name: voip.provider.example, port: 0}")],
     "provider.port")
case("inv_model_cannot_run_family", I, [(P1, P1.replace(", firmware_family: uc-4.0", ""))],
     "sites[0].phones[1].model", mark='"0004f2000002"', contains="SoundPoint IP 650 cannot run UC Software 5.x")
case("inv_old_family_name", I, [(P1, P1.replace("uc-4.0", "uc-4.x"))], "sites[0].phones[1].firmware_family",
     mark='"0004f2000002"', contains="use uc-4.0")
case("inv_unknown_family", I, [("firmware_family: uc-5.x", "firmware_family: uc-6.x")], "firmware_family")
case("inv_param_unknown", I, [("      reg.1.server.1.expires: 60\n", "      reg.1.server.1.expirse: 60\n")],
     "sites[0].params.reg.1.server.1.expirse", contains="not a parameter")
case("inv_param_env_in_int", I, [("      reg.1.server.1.expires: 60\n", "      reg.1.server.1.expires: 'env:HOME'\n")],
     "sites[0].params.reg.1.server.1.expires", contains="allowed only in secret parameters")
case("inv_param_secret_in_int", I, [("      reg.1.server.1.expires: 60\n", "      reg.1.server.1.expires: 'secret:x'\n")],
     "sites[0].params.reg.1.server.1.expires", contains="allowed only in secret parameters")
case("inv_param_secret_in_label", I, [("params: {reg.1.address: \"1001\"", "params: {reg.1.label: \"secret:router\"")],
     "sites[0].phones[0].params.reg.1.label", mark="secret:router", contains="allowed only in secret parameters")
case("inv_param_fullwidth", I, [("      reg.1.server.1.expires: 60\n", '      reg.1.server.1.expires: "６０"\n')],
     "sites[0].params.reg.1.server.1.expires", contains="ASCII digits")
case("inv_param_float", I, [("      reg.1.server.1.expires: 60\n", "      reg.1.server.1.expires: 60.5\n")],
     "sites[0].params.reg.1.server.1.expires")
case("inv_param_bool", I, [("      reg.1.server.1.port: 5060\n", "      reg.1.server.1.register: true\n")],
     "sites[0].params.reg.1.server.1.register")
case("inv_param_below_family_min", I, [("      reg.1.server.1.expires: 60\n", "      reg.1.server.1.expires: 5\n")],
     "sites[0].params.reg.1.server.1.expires", contains="out of range")
case("inv_param_server_zero", I, [("      reg.1.server.2.expires: 60\n", "      reg.1.server.0.expires: 60\n")],
     "sites[0].params.reg.1.server.0.expires", contains="servers are numbered")
case("inv_param_garbage_server_address", I, [("      reg.1.server.2.address: 127.70.0.1\n", "      reg.1.server.2.address: '...'\n")],
     "sites[0].params.reg.1.server.2.address", contains="neither an IP address nor a host name")
case("inv_credentials_missing_secret", I, [(P1, P1.replace("credentials: phone_admin", "credentials: phone_admn"))],
     "sites[0].phones[1].credentials", mark="phone_admn", contains="no secret 'phone_admn'")
case("inv_credentials_shell", I, [(P1, P1.replace("credentials: phone_admin", "credentials: 'admin; rm -rf /'"))],
     "sites[0].phones[1].credentials", mark="admin; rm")
case("inv_param_secret_missing", I, [('"secret:sip_1001"', '"secret:sip_9999"')],
     "sites[0].phones[0].params.reg.1.auth.password", mark="sip_9999", contains="no secret 'sip_9999'")
case("inv_unknown_top_field", I, [("name: corpus\n", "name: corpus\nsite: hq\n")], "site", mark="site: hq")
case("inv_unknown_phone_field", I, [(P1, P1.replace("model:", "modle:"))], "sites[0].phones[1].modle", mark="modle",
     contains="unknown field")
case("inv_missing_boot_server", I, [('    boot_server: {url: "ftp://127.71.0.3:2121/"}\n', "")],
     "sites[1].boot_server", mark="  - name: branch", contains="Field required")
case("inv_no_sites", I, [(BASE[I][BASE[I].index("sites:\n"):], "sites: []\n")], "sites", mark="sites: []")
case("inv_registrar_limit_negative", I, [("registrar_limits: {voip.provider.example: 50}", "registrar_limits: {voip.provider.example: -1}")],
     "registrar_limits.voip.provider.example", mark="registrar_limits", contains="positive")
case("inv_registrar_limit_inf", I, [("registrar_limits: {voip.provider.example: 50}", "registrar_limits: {voip.provider.example: .inf}")],
     "registrar_limits.voip.provider.example", mark="registrar_limits", contains="finite")
case("inv_registrar_limit_garbage_key", I, [("registrar_limits: {voip.provider.example: 50}", "registrar_limits: {'bad host!': 50}")],
     "registrar_limits.bad host!", mark="registrar_limits", contains="neither an IP address")
case("inv_secrets_file_missing", I, [("secrets_file: ../base/secrets.yml", "secrets_file: no-such-secrets.yml")], "secrets_file",
     contains="not found")
case("inv_timestamp_name", I, [("name: corpus\n", "name: 2024-02-30\n")], "", mark="name: 2024-02-30",
     contains="cannot read this value")
case("inv_control_char_name", I, [("name: corpus\n", 'name: "corp\\x07us"\n')], "name", mark="name: \"corp",
     contains="control characters")
case("inv_phones_mapping", I, [('    phones:\n      - {mac: "0004f2000101"', '    phones:\n      {mac: "0004f2000101"')],
     "sites[1].phones", mark='{mac: "0004f2000101"', contains="valid list")
case("inv_top_level_list", I, [(BASE[I], "- name: corpus\n- sites: []\n")], "", mark="- name: corpus",
     contains="expected a mapping")
case("inv_broken_yaml", I, [("    gateway: 127.70.0.1\n", "    gateway: [127.70.0.1\n")], "", mark="dns:",
     contains="not valid YAML")
case("inv_tab_indent", I, [("    gateway: 127.70.0.1\n", "\tgateway: 127.70.0.1\n")], "", mark="\tgateway",
     contains="not valid YAML")
case("inv_alias_bomb_mac", I, [("name: corpus\n", BOMB + "name: corpus\n"), ('mac: "0004f2000002"', "mac: *a9")],
     "x5", mark="x5:", contains="alias")
case("inv_recursive_alias", I, [("    params:\n      reg.1.server.1.address: voip.provider.example\n      reg.1.server.1.port",
                                 "    params: &p\n      loop: *p\n      reg.1.server.1.address: voip.provider.example\n      reg.1.server.1.port")],
     "sites[0].params", mark="params: &p", contains="recursive alias")
case("inv_merge_duplicate", I, [("    timezone: Europe/Berlin\n", "    timezone: Europe/Berlin\n    timezone: UTC\n")],
     "sites[0].timezone", mark="timezone: UTC", contains="key given twice")
bytes_case("inv_not_utf8", I, BASE[I].replace("name: corpus", "name: corp\udcffus").encode("utf-8", "surrogateescape"),
           2, "", "not UTF-8")
bytes_case("inv_utf16", I, BASE[I].encode("utf-16"), 1, "", "not UTF-8")
bytes_case("inv_empty", I, b"", 1, "", "expected a mapping")
bytes_case("inv_nul_bytes", I, BASE[I].replace("name: corpus", "name: corp\0us").encode(), 2, "", "not valid YAML")

# ------------------------------------------------------------------ secrets files (through an inventory)
S = "secrets"
case("sec_list_shaped", S, [(BASE[S], "- phone_admin\n- router\n")], "", mark="- phone_admin", contains="expected a mapping")
case("sec_scalar_entry", S, [('phone_admin: {username: Polycom, password: "corpus-admin"}', "phone_admin: hunter2-not-shown")],
     "phone_admin", mark="phone_admin:", contains="each secret is a mapping")
case("sec_int_password", S, [('sip_1001: {password: "corpus-sip"}', "sip_1001: {password: 0123}")],
     "sip_1001.password", mark="sip_1001", contains="must be text")
case("sec_unknown_field", S, [('sip_1001: {password: "corpus-sip"}', 'sip_1001: {pasword: "corpus-sip"}')],
     "sip_1001.pasword", mark="sip_1001", contains="unknown field")
case("sec_duplicate_key", S, [('router: {username: admin', 'phone_admin: {username: x}\nrouter: {username: admin')],
     "phone_admin", mark="phone_admin: {username: x}", contains="key given twice")
case("sec_broken_yaml", S, [('boot_hq: {username: boot, password: "corpus-boot"}', 'boot_hq: {username: boot, password: "corpus-boot"')],
     "", mark="sip_1001", contains="not valid YAML")
case("sec_alias_bomb", S, [("phone_admin:", BOMB + "phone_admin:")], "x5", mark="x5:", contains="alias")
case("sec_scalar_top", S, [(BASE[S], "just a string\n")], "", mark="just a string", contains="expected a mapping")
bytes_case("sec_not_utf8", S, BASE[S].replace("corpus-sip", "corpus-s\udcffp").encode("utf-8", "surrogateescape"),
           5, "", "not UTF-8")

# ------------------------------------------------------------------ rollout playbooks
R = "rollout"
case("ro_duplicate_key", R, [("  max_unavailable: 1\n", "  max_unavailable: 1\n  max_unavailable: 50\n")],
     "strategy.max_unavailable", mark="max_unavailable: 50", contains="lines 12 and 13")
case("ro_registered_to_0_7", R, [("registered_to: [1, 2]", "registered_to: [0, 7]")], "verify.registered_to[0]",
     contains="numbered from 1")
case("ro_registered_to_7", R, [("registered_to: [1, 2]", "registered_to: [1, 7]")], "verify.registered_to[1]",
     contains="not configured")
case("ro_registered_to_3", R, [("registered_to: [1, 2]", "registered_to: [1, 3]")], "verify.registered_to[1]",
     contains="not configured")
case("ro_registered_to_twice", R, [("registered_to: [1, 2]", "registered_to: [1, 1]")], "verify.registered_to[1]",
     contains="twice")
case("ro_registered_to_register0", R, [("  reg.1.server.2.register: 1\n", "  reg.1.server.2.register: 0\n")],
     "verify.registered_to[1]", mark="registered_to", contains="register=0")
case("ro_registered_to_string", R, [("registered_to: [1, 2]", 'registered_to: "1,2"')], "verify.registered_to")
case("ro_verify_within_inf", R, [("within: 60}", "within: .inf}")], "verify.within", contains="finite")
case("ro_verify_within_nan", R, [("within: 60}", "within: .nan}")], "verify.within", contains="finite")
case("ro_verify_within_negative", R, [("within: 60}", "within: -5}")], "verify.within")
case("ro_target_mac_typo", R, [('macs: ["0004f2000001", "0004f2000002"]', 'macs: ["0004f2000001", "0004f2000020"]')],
     "targets.macs[1]", contains="0004f2000020")
case("ro_target_mac_invalid", R, [('macs: ["0004f2000001", "0004f2000002"]', 'macs: ["0004f2000001", "0004f2-0002"]')],
     "targets.macs[1]", contains="not a MAC address")
case("ro_target_site_typo", R, [("targets: {sites: [hq],", "targets: {sites: [hqq],")], "targets.sites[0]",
     contains="no site 'hqq'")
case("ro_target_site_markup", R, [("targets: {sites: [hq],", 'targets: {sites: ["[/x]"],')], "targets.sites[0]",
     contains="no site '[/x]'")
case("ro_target_model_unknown", R, [("targets: {sites: [hq],", "targets: {models: [IP 9999], sites: [hq],")],
     "targets.models[0]", contains="unknown phone model")
case("ro_target_macs_other_site", R, [("targets: {sites: [hq],", "targets: {sites: [branch],")], "targets.macs[0]",
     contains="not a phone of the targeted sites")
case("ro_param_dict_interp", R, [('"{site.gateway}"', '"{site.__dict__}"')], "params.reg.1.server.2.address",
     contains="not a placeholder")
case("ro_param_router_interp", R, [('"{site.gateway}"', '"{site.router}"')], "params.reg.1.server.2.address",
     contains="not a placeholder")
case("ro_param_credentials_interp", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 120\n  reg.1.label: \"{phone.credentials}\"\n")],
     "params.reg.1.label", mark="reg.1.label", contains="not a placeholder")
case("ro_param_unbalanced_brace", R, [('"{site.gateway}"', '"{site.gateway"')], "params.reg.1.server.2.address",
     contains="unbalanced")
case("ro_param_env_home", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 'env:HOME'\n")],
     "params.reg.1.server.1.expires", contains="allowed only in secret parameters")
case("ro_param_secret_x", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 'secret:x'\n")],
     "params.reg.1.server.1.expires", contains="allowed only in secret parameters")
case("ro_param_env_label", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 120\n  reg.1.label: env:FLEET_REDIS_URL\n")],
     "params.reg.1.label", mark="reg.1.label", contains="allowed only in secret parameters")
case("ro_param_fullwidth", R, [("  reg.1.server.1.expires: 120\n", '  reg.1.server.1.expires: "１２０"\n')],
     "params.reg.1.server.1.expires", contains="ASCII digits")
case("ro_param_fullwidth_name", R, [("  reg.1.server.1.expires: 120\n", "  reg.１.server.1.expires: 120\n")],
     "params.reg.１.server.1.expires", contains="not a parameter")
case("ro_param_bool", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: true\n")],
     "params.reg.1.server.1.expires", contains="found bool")
case("ro_param_float", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 120.0\n")],
     "params.reg.1.server.1.expires", contains="found float")
case("ro_param_unknown", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expiry: 120\n")],
     "params.reg.1.server.1.expiry", contains="not a parameter")
case("ro_param_garbage_server", R, [('"{site.gateway}"', '"gateway!!"')], "params.reg.1.server.2.address",
     contains="IP address or host name")
case("ro_param_below_family_min", R, [("  reg.1.server.1.expires: 120\n", "  reg.1.server.1.expires: 5\n")],
     "params.reg.1.server.1.expires", contains="out of range")
case("ro_param_server_zero", R, [("  reg.1.server.2.port: 5060\n", "  reg.1.server.0.port: 5060\n")],
     "params.reg.1.server.0.port", contains="servers are numbered")
case("ro_params_empty", R, [("verify: {registered_to: [1, 2], within: 60}\n", "verify: {registered_to: [1], within: 60}\n"),
                            ("params:\n  reg.1.server.2.address: \"{site.gateway}\"\n  reg.1.server.2.port: 5060\n"
                             "  reg.1.server.2.register: 1\n  reg.1.server.1.expires: 120\n", "params: {}\n")],
     "params", mark="params: {}", contains="at least 1")
case("ro_canary_bool", R, [("  canary: 1\n", "  canary: true\n")], "strategy.canary")
case("ro_canary_string", R, [("  canary: 1\n", '  canary: "1"\n')], "strategy.canary")
case("ro_wave_size_zero", R, [('  wave_size: "50%"\n', "  wave_size: 0\n")], "strategy.wave_size", contains="positive")
case("ro_wave_size_150", R, [('  wave_size: "50%"\n', '  wave_size: "150%"\n')], "strategy.wave_size", contains="at most 100%")
case("ro_wave_size_fullwidth", R, [('  wave_size: "50%"\n', '  wave_size: "５０%"\n')], "strategy.wave_size",
     contains="ASCII digits")
case("ro_max_unavailable_negative", R, [("  max_unavailable: 1\n", "  max_unavailable: -1\n")], "strategy.max_unavailable")
case("ro_budget_garbage", R, [('failure_budget: {total: "10%"', 'failure_budget: {total: "ten"')],
     "strategy.failure_budget.total")
case("ro_progress_deadline_inf", R, [("  progress_deadline: 300\n", "  progress_deadline: .inf\n")],
     "strategy.progress_deadline", contains="finite")
case("ro_cron_minute_61", R, [('cron: "30 2 * * 2"', 'cron: "61 2 * * 2"')], "schedule.cron", contains="outside 0-59")
case("ro_cron_four_fields", R, [('cron: "30 2 * * 2"', 'cron: "30 2 * *"')], "schedule.cron", contains="needs 5 fields")
case("ro_cron_garbage", R, [('cron: "30 2 * * 2"', 'cron: "at two every tuesday"')], "schedule.cron")
case("ro_cron_dow_8", R, [('cron: "30 2 * * 2"', 'cron: "30 2 * * 8"')], "schedule.cron", contains="day of week")
case("ro_bad_timezone", R, [("timezone: Europe/Berlin}", "timezone: Europe/Berlinn}")], "schedule.timezone",
     contains="unknown time zone")
case("ro_timezone_path", R, [("timezone: Europe/Berlin}", "timezone: ../../etc/passwd}")], "schedule.timezone",
     contains="unknown time zone")
case("ro_drill_missing", R, [("drill: base/experiment.yml", "drill: base/no-such-drill.yml")], "drill", contains="not found")
case("ro_drill_invalid", R, [("drill: base/experiment.yml", "drill: cases/exp_server_zero.yml")], "drill",
     contains="drill playbook is invalid")
case("ro_drill_no_router", R, [("targets: {sites: [hq], macs: [\"0004f2000001\", \"0004f2000002\"]}", "targets: {sites: [branch]}"),
                               ("verify: {registered_to: [1, 2], within: 60}", "verify: {registered_to: [1], within: 60}")],
     "drill", mark="drill:", contains="has no router")
case("ro_kind_typo", R, [("kind: rollout", 'kind: "rolout"')], "kind")
case("ro_name_space", R, [("name: corpus-rollout", "name: corpus rollout")], "name")
case("ro_rollback_string", R, [("rollback: true", 'rollback: "yes"')], "rollback")
case("ro_unknown_field", R, [("verify: {", "verfy: {")], "verfy")
case("ro_alias_bomb", R, [("kind: rollout\n", BOMB + "kind: rollout\n")], "x5", mark="x5:", contains="alias")
case("ro_top_level_list", R, [(BASE[R], "- kind: rollout\n")], "", mark="- kind", contains="expected a mapping")
bytes_case("ro_not_utf8", R, BASE[R].replace("corpus-rollout", "corpus-r\udce9llout").encode("utf-8", "surrogateescape"),
           2, "", "not UTF-8")

# ------------------------------------------------------------------ experiment playbooks
E = "experiment"
OUT = "  - {name: cut the WAN, outage: link-down, max_duration: 120}"
case("exp_duplicate_max_duration", E, [(OUT, "  - {name: cut the WAN, outage: link-down, max_duration: 120, max_duration: 86400}")],
     "steps[1].max_duration", mark="max_duration: 86400", contains="key given twice")
case("exp_server_zero", E, [("server: 1, within: 30}", "server: 0, within: 30}")], "steps[0].server")
case("exp_server_not_configured", E, [("server: 2, within: 30", "server: 3, within: 30")], "steps[2].server",
     contains="server 3 does not exist")
case("exp_within_inf", E, [("server: 1, within: 30}", "server: 1, within: .inf}")], "steps[0].within", contains="finite")
case("exp_within_nan", E, [("server: 1, within: 30}", "server: 1, within: .nan}")], "steps[0].within", contains="finite")
case("exp_within_negative", E, [("server: 1, within: 30}", "server: 1, within: -1}")], "steps[0].within")
case("exp_max_duration_too_long", E, [(OUT, OUT.replace("120", "86401"))], "steps[1].max_duration")
case("exp_max_duration_string", E, [(OUT, OUT.replace("120", '"120"'))], "steps[1].max_duration")
case("exp_max_duration_float", E, [(OUT, OUT.replace("120", "120.5"))], "steps[1].max_duration")
case("exp_max_duration_bool", E, [(OUT, OUT.replace("120", "true"))], "steps[1].max_duration")
case("exp_delay_fullwidth", E, [(OUT, OUT.replace("}", ', delay_ms: "５０"}'))], "steps[1].delay_ms")
case("exp_loss_too_big", E, [(OUT, OUT.replace("}", ", loss: 1.5}"))], "steps[1].loss")
case("exp_unknown_mode", E, [(OUT, OUT.replace("link-down", "link-dwn"))], "steps[1].outage")
case("exp_two_kinds", E, [("  - {name: baseline, expect:", "  - {name: baseline, wait: 1, expect:")], "steps[0]",
     contains="exactly one of")
case("exp_no_kind", E, [("  - {name: restore, restore: true}", "  - {name: restore, unplug: true}")], "steps[4]",
     contains="exactly one of")
case("exp_restore_first", E, [("  - {name: baseline, expect: working_server, server: 1, within: 30}",
                               "  - {name: early, restore: true}\n  - {name: baseline, expect: working_server, server: 1, within: 30}")],
     "steps[0].restore", mark="early", contains="restore without an outage")
case("exp_two_outages", E, [(OUT, OUT + "\n  - {name: cut again, outage: drop, max_duration: 60}")], "steps[2].outage",
     mark="cut again", contains="second outage")
case("exp_duplicate_step_names", E, [("{name: back,", "{name: baseline,")], "steps[5].name", mark="{name: baseline,", last=True, contains="unique")
case("exp_step_name_control", E, [("{name: back,", '{name: "ba\\u0007ck",')], "steps[5].name", contains="control characters")
case("exp_unknown_site", E, [("site: hq", "site: hqq")], "site", contains="no site 'hqq'")
case("exp_mac_typo", E, [('phones: {macs: ["0004f2000001"]}', 'phones: {macs: ["0004f2000001", "0004f2000030"]}')],
     "steps[2].phones.macs[1]", contains="0004f2000030")
case("exp_mac_invalid", E, [('phones: {macs: ["0004f2000001"]}', 'phones: {macs: ["0004f2000001", "zz"]}')],
     "steps[2].phones.macs[1]", contains="not a MAC address")
case("exp_model_unknown", E, [('phones: {macs: ["0004f2000001"]}', "phones: {models: [VVX 9999]}")],
     "steps[2].phones.models[0]", contains="unknown phone model")
case("exp_call_server_zero", E, [("expect_server: 2", "expect_server: 0")], "steps[3].expect_server")
case("exp_call_server_missing", E, [("expect_server: 2", "expect_server: 5")], "steps[3].expect_server",
     contains="server 5 does not exist")
case("exp_call_shell", E, [('call: "2000"', 'call: "2000; reboot"')], "steps[3].call")
case("exp_from_phone_elsewhere", E, [('call: "2000"', 'call: "2000", from_phone: "0004f2000101"')], "steps[3].from_phone",
     contains="not a phone of site hq")
case("exp_sample_interval_zero", E, [("sample_interval: 0.25", "sample_interval: 0")], "sample_interval")
case("exp_wrong_kind", E, [("kind: experiment", "kind: rollout")], "kind")
case("exp_no_router", E, [("site: hq", "site: branch"), ('phones: {macs: ["0004f2000001"]}', "phones: {}")],
     "steps[1].outage", mark="cut the WAN", contains="no router")
case("exp_wait_too_long", E, [("  - {name: restore, restore: true}", "  - {name: pause, wait: 1.0e9}\n  - {name: restore, restore: true}")],
     "steps[4].wait", mark="pause")
case("exp_no_steps", E, [(BASE[E][BASE[E].index("steps:\n"):], "steps: []\n")], "steps", mark="steps: []")
case("exp_unknown_expect", E, [("{name: back, expect: working_server", "{name: back, expect: registered")], "steps[5].expect")
case("exp_alias_bomb", E, [("kind: experiment\n", BOMB + "kind: experiment\n")], "x5", mark="x5:", contains="alias")
bytes_case("exp_not_utf8", E, BASE[E].replace("baseline", "basel\udcffne").encode("utf-8", "surrogateescape"),
           6, "", "not UTF-8")

# ------------------------------------------------------------------ lab files
L = "lab"
S1 = "      - {address: provider, expires: 12, overlap: 5, retry_timeout_ms: 500, retry_max_count: 3}"
S2 = "      - {address: gateway, expires: 12, overlap: 5}"
case("lab_overlap_over_expires", L, [(S2, "      - {address: gateway, expires: 12, overlap: 60}")], "sites[0].servers[1].overlap",
     contains="must be less than expires")
case("lab_overlap_equals_expires", L, [(S2, "      - {address: gateway, expires: 12, overlap: 12}")],
     "sites[0].servers[1].overlap", contains="must be less than expires")
case("lab_garbage_server_address", L, [(S2, "      - {address: not an address, expires: 12, overlap: 5}")],
     "sites[0].servers[1].address", contains="not an IP address")
case("lab_server_off_machine", L, [(S2, "      - {address: 192.0.2.7, expires: 12, overlap: 5}")],
     "sites[0].servers[1].address", contains="not a loopback address")
case("lab_collector_no_port", L, [('syslog: "127.0.0.1:5514"', 'syslog: "127.0.0.1"')], "sites[0].collector.syslog",
     contains="port required")
case("lab_collector_port_big", L, [('events: "127.0.0.1:8514"', 'events: "127.0.0.1:85140"')], "sites[0].collector.events",
     contains="outside 1-65535")
case("lab_collector_not_loopback", L, [('events: "127.0.0.1:8514"', 'events: "0.0.0.0:8514"')], "sites[0].collector.events",
     contains="not a loopback address")
case("lab_collector_garbage", L, [('events: "127.0.0.1:8514"', 'events: "collector"')], "sites[0].collector.events",
     contains="host:port")
case("lab_unknown_model", L, [('models: ["SoundPoint IP 650", "VVX 410"]', 'models: ["SoundPoint IP 650", "VVX 9999"]')],
     "sites[0].phones.models", contains="unknown model")
case("lab_count_negative", L, [("phones: {count: 2,", "phones: {count: -1,")], "sites[0].phones.count")
case("lab_count_string", L, [("phones: {count: 2,", 'phones: {count: "2",')], "sites[0].phones.count")
case("lab_count_float", L, [("phones: {count: 2,", "phones: {count: 2.0,")], "sites[0].phones.count")
case("lab_count_bool", L, [("phones: {count: 2,", "phones: {count: true,")], "sites[0].phones.count")
case("lab_expires_fullwidth", L, [(S2, '      - {address: gateway, expires: "１２", overlap: 5}')], "sites[0].servers[1].expires")
case("lab_fault_out_of_range", L, [("faults: {1: never-return}", "faults: {5: never-return}")], "sites[0].faults[5]",
     contains="phone 5 does not exist")
case("lab_unknown_fault", L, [("faults: {1: never-return}", "faults: {1: explode}")], "sites[0].faults[1]",
     contains="unknown fault")
case("lab_duplicate_key", L, [("net: 50\n", "net: 50\nnet: 51\n")], "net", mark="net: 51", contains="key given twice")
case("lab_register_two", L, [(S2, "      - {address: gateway, expires: 12, overlap: 5, register: 2}")],
     "sites[0].servers[1].register")
case("lab_boot_time_inf", L, [("timing: {boot_time: 1.0,", "timing: {boot_time: .inf,")], "timing.boot_time", contains="finite")
case("lab_retry_interval_nan", L, [("retry_interval: 4,", "retry_interval: .nan,")], "timing.retry_interval", contains="finite")
case("lab_provider_garbage", L, [("provider: {name: voip.provider.example}", "provider: {name: 'voip provider'}")],
     "provider.name", contains="neither an IP address nor a host name")
case("lab_provider_is_ip", L, [("provider: {name: voip.provider.example}", "provider: {name: 127.0.0.1}")],
     "provider.name", contains="DNS name")
case("lab_net_zero", L, [("net: 50\n", "net: 0\n")], "net")
case("lab_params_env_home", L, [("    faults: {1: never-return}\n", "    faults: {1: never-return}\n    params: {reg.1.server.1.expires: 'env:HOME'}\n")],
     "sites[0].params.reg.1.server.1.expires", mark="env:HOME", contains="allowed only in secret parameters")
case("lab_expires_below_family", L, [("firmware_family: uc-5.x", "firmware_family: sip-3.x")], "sites[0].servers[0].expires",
     mark=S1.strip(), contains="out of range")
case("lab_no_servers", L, [("    servers:\n" + S1 + "\n" + S2 + "\n", "    servers: []\n")], "sites[0].servers",
     mark="servers: []", contains="at least 1")
case("lab_boot_protocol_tftp", L, [("boot_protocol: http", "boot_protocol: tftp")], "sites[0].boot_protocol")
case("lab_unknown_field", L, [("boot_protocol: http", "boot_protocol: http\n    routers: 2")], "sites[0].routers",
     mark="routers: 2")
case("lab_alias_bomb", L, [("name: corpus-lab\n", BOMB + "name: corpus-lab\n")], "x5", mark="x5:", contains="alias")
bytes_case("lab_not_utf8", L, BASE[L].replace("corpus-lab", "corpus-l\udcffb").encode("utf-8", "surrogateescape"),
           1, "", "not UTF-8")


def main() -> None:
    cases_dir = HERE / "cases"
    cases_dir.mkdir(exist_ok=True)
    for old in cases_dir.glob("*.yml"):
        old.unlink()
    index = []
    for c in CASES:
        (HERE / c["file"]).write_bytes(c["_data"])
        index.append({k: v for k, v in c.items() if not k.startswith("_")})
    names = [c["file"] for c in index]
    assert len(set(names)) == len(names), "duplicate case names"
    (HERE / "index.yml").write_text("# Generated by make_corpus.py: each case, the command kind that validates it, and the\n"
                                    "# line and field its error must name (line 0: the file as a whole).\n"
                                    + yaml.safe_dump(index, sort_keys=False, allow_unicode=True))
    print(f"{len(index)} cases")


if __name__ == "__main__":
    main()
