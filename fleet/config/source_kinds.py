"""Per-server evidence sources by the inventory's kind: the one table that knows each one.

A site names its wire sources under `capture:` (`router [IFACE]`, `interface NAME`,
`hep HOST:PORT`, or the mapping form) and its gateway's registrar under `gateway:`
(kind "gateway"). Per kind this table says what the inventory checks when it loads
(which fields of a `capture` entry it takes, which it needs, whether it runs over
the router's SSH) and which module implements it: the collector imports that
module only when a site names the kind and calls its `start` (one module per
source in fleet/evidence/sources/). The inventory checks kinds here without
importing any source, as it checks router drivers against fleet.config.platforms.

A new evidence source is its module plus one `register(SourceKind(...))` (here, or
in a plug-in that imports this module).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

GATEWAY = "gateway"        # the gateway's registrar bindings: written `gateway: {address, platform}`, not a capture


@dataclass(frozen=True)
class SourceKind:
    """One kind of per-server evidence source.

    name: how the inventory names it (`capture: NAME ...`); module: where its `start(ctx, entry)` lives.
    word: the capture field the text form's one word fills (`interface eth1`: interface) and whether that word
    is optional (`router` alone: any interface). takes: the capture fields it reads; needs: those it cannot
    run without; owns: fields no other kind may set (a hep capture's listen, senders, auth_keys).
    router_ssh: it runs over the site router's SSH (the router's platform must speak it).
    sees: what of the wire it decodes, for attribution's `observable_by` ("wire": UDP captures, "hep": HEP from
    the SIP servers, "": it reads no SIP)."""
    name: str
    module: str
    word: str | None = None
    word_optional: bool = False
    takes: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    owns: tuple[str, ...] = ()
    router_ssh: bool = False
    sees: str = "wire"
    text_form: str = ""     # how the inventory writes it as text, for error messages ("interface NAME")

    @property
    def is_capture(self) -> bool:
        """Written under `capture:` (every kind but the gateway's registrar)."""
        return self.name != GATEWAY


_KINDS: dict[str, SourceKind] = {}
KINDS: Mapping[str, SourceKind] = MappingProxyType(_KINDS)     # read-only view: change it by register()


def register(kind: SourceKind) -> SourceKind:
    """Add (or replace) a kind; inventories loaded afterwards may name it."""
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind registered at run time (a test's fake one)."""
    _KINDS.pop(name, None)


def get(name: str) -> SourceKind:
    """The kind registered as `name`; otherwise a ValueError naming the capture forms."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"evidence source {name!r:.60} is not one of: {capture_forms()}") from None


def capture_kinds() -> list[SourceKind]:
    """The kinds written under `capture:`, in registration order."""
    return [k for k in _KINDS.values() if k.is_capture]


def capture_forms() -> str:
    """The text forms of every capture kind ("router [IFACE] | interface NAME | hep HOST:PORT")."""
    return " | ".join(k.text_form or k.name for k in capture_kinds())


register(SourceKind("router", "fleet.evidence.sources.router_capture", word="interface", word_optional=True,
                    takes=("interface", "platform"), router_ssh=True, text_form="router [IFACE]"))
register(SourceKind("interface", "fleet.evidence.sources.local_capture", word="interface",
                    takes=("interface",), needs=("interface",), text_form="interface NAME"))
register(SourceKind("hep", "fleet.evidence.sources.hep_source", word="listen",
                    takes=("listen", "senders", "auth_keys"), needs=("listen",),
                    owns=("listen", "senders", "auth_keys"),
                    sees="hep", text_form="hep HOST:PORT"))
register(SourceKind(GATEWAY, "fleet.evidence.sources.gateway_poller", router_ssh=True, sees=""))
