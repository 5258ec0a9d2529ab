"""The SIP User-Agent of Polycom phones: read in every shape the conformance corpus holds, and rendered per model
and firmware version from those entries (the lab's phones send what real ones send, not one fixed string).

Shapes (entries `sip-ua-*`): "Polycom/5.5.2.8571 PolycomVVX-VVX_310-UA/5.5.2.8571" (UC Software 5.4+),
"PolycomVVX-VVX_310-UA/5.3.0.12768" (earlier), "..._0004f2abcdef" after the version (sec.tagSerialNo=1),
"PolycomSoundPointIP-SPIP_335-UA/3.2.1.0078" and the spaced "PolycomSoundPointIP SPIP_550 UA 3.3.2.0413".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from soundpoint import conformance

MAX_LEN = 256      # a header value read off the network is bounded before it is matched
_UA = re.compile(r"(?:Polycom/(?P<prefix>\d+(?:\.\d+){1,3})\s+)?(?:FileTransport\s+)?Polycom(?P<product>[A-Za-z]+)"
                 r"[-\s](?P<model>[A-Za-z]+)_(?P<number>[0-9A-Za-z]+)[-\s]UA[/\s](?P<version>\d+(?:\.\d+){1,3})"
                 r"(?:_(?P<serial>[0-9A-Fa-f]{12}))?")
# lab model name -> (product, model token) as the phones spell them in their User-Agent
_PRODUCTS = {"SoundPoint IP": ("SoundPointIP", "SPIP"), "SoundStation IP": ("SoundStationIP", "SSIP"),
             "VVX": ("VVX", "VVX")}


@dataclass(frozen=True)
class UserAgent:
    product: str          # "VVX", "SoundPointIP"
    model: str            # "VVX 310", "SPIP 550"
    version: str          # "5.5.2.8571"
    serial: str = ""      # the MAC with sec.tagSerialNo=1


def parse(value: str) -> UserAgent | None:
    """Model and firmware from a Polycom User-Agent in any corpus shape; None for anything else."""
    m = _UA.search((value or "")[:MAX_LEN])
    if not m:
        return None
    return UserAgent(m["product"], f"{m['model']} {m['number']}", m["version"], (m["serial"] or "").lower())


def render(model: str, family: str, version: str) -> str:
    """The User-Agent a phone of `model` on `family` at firmware `version` sends: the corpus entry for that family
    and version (not a variant), with its product, model token, number and version(s) replaced."""
    found = [e for e in conformance.select(area="sip", family=family, version=version, prefix="sip-ua-")
             if not e.variant_of]
    if not found:
        raise LookupError(f"no sip-ua-* conformance entry for {family} {version}")
    template = str(found[0].answer["headers"]["User-Agent"])
    m = _UA.search(template)
    if m is None:
        raise LookupError(f"{found[0].id}: its User-Agent is not a Polycom shape")
    series, _, number = model.rpartition(" ")
    product, token = _PRODUCTS.get(series, (series.replace(" ", ""), series.replace(" ", "")))
    fill = {"prefix": version, "product": product, "model": token, "number": number, "version": version}
    out, last = [], 0
    for name in ("prefix", "product", "model", "number", "version"):
        if m.start(name) < 0:
            continue
        out += [template[last:m.start(name)], fill[name]]
        last = m.end(name)
    return "".join(out) + template[last:]
