"""The conformance corpus: every answer a phone, router or server gives that fleet parses or the lab sends.

Why one corpus: the controller and the virtual lab were written by the same
people, so they could agree on a shared guess and every test would pass while a
real phone answers something else. Here each answer shape is one YAML file
under `entries/<area>/<id>.yml`, with its source (a guide with version and page
or section, or a public client's repository and path that talks to real
phones). The controller's drivers are unit-tested against every entry; the
virtual phones render their answers from the same entries.

Entry fields (the file's stem is the id):
    area:      rest | polling | notification | web-ui | check-sync | sip | provisioning | router | gateway | dns | switch
    families:  firmware families it applies to (soundpoint.families.NAMES); [] for routers and servers
    versions:  firmware versions it applies to: "any", or ranges such as "5.4-5.6", ">=5.7", "<5.4", joined by ","
    status:    confirmed (a source shows this shape) | unconfirmed (no source shows it; readers accept every
               shape the sources allow) | disputed (sources disagree; `note` says how)
    sources:   list of {ref: "guide title, version, page/section" or "owner/repo:path", says: what it shows}
    note:      why this entry is what it is, what is uncertain
    request:   optional {method, path, body}
    answer:    {status: HTTP or SIP status (optional), content_type (optional), headers (optional map),
                body: the answer's text exactly as sent}
    variant_of: optional id of the entry this is another allowed shape of

`python -m soundpoint.conformance unconfirmed` lists the entries no source confirms.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).with_name("entries")
AREAS = ("rest", "polling", "notification", "web-ui", "check-sync", "sip", "provisioning", "router", "gateway", "dns",
         "switch")
STATUSES = ("confirmed", "unconfirmed", "disputed")
_FIELDS = {"area", "families", "versions", "status", "sources", "note", "request", "answer", "variant_of"}


class CorpusError(ValueError):
    """A malformed entry; the message names the file and the field."""


@dataclass(frozen=True)
class Source:
    ref: str
    says: str = ""


@dataclass(frozen=True)
class Entry:
    id: str
    area: str
    families: tuple[str, ...]
    versions: str
    status: str
    sources: tuple[Source, ...]
    note: str
    request: dict[str, Any]
    answer: dict[str, Any]
    variant_of: str = ""
    path: Path = field(default=Path(), compare=False)

    @property
    def body(self) -> str:
        return str(self.answer.get("body", ""))

    @property
    def status_code(self) -> int | None:
        code = self.answer.get("status")
        return int(code) if code is not None else None

    def json(self) -> Any:
        """The body parsed as JSON (REST answers)."""
        return json.loads(self.body)

    def applies_to(self, family: str | None = None, version: str | None = None) -> bool:
        if family is not None and self.families and family not in self.families:
            return False
        return version is None or version_in(version, self.versions)


def _version_key(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    if not parts:
        raise ValueError(f"not a firmware version: {text!r}")
    return tuple(int(p) for p in parts[:4])


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Compare on the shorter of the two: 5.8.1 is within "5.8", and "5.4-5.6" includes 5.6.3."""
    n = min(len(a), len(b))
    return (a[:n] > b[:n]) - (a[:n] < b[:n])


def version_in(version: str, spec: str) -> bool:
    """Whether a firmware version (such as "5.8.0.12345" or "UC 5.7.2") lies in a spec ("any", "5.4-5.6", ">=5.7", "<5.4", joined by ",")."""
    spec = (spec or "any").strip()
    if spec == "any":
        return True
    v = _version_key(version)
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(>=|<=|>|<|==)?\s*([\d.]+)(?:\s*-\s*([\d.]+))?", part)
        if not m:
            raise ValueError(f"not a version range: {part!r}")
        op, lo, hi = m.groups()
        lo_k = _version_key(lo)
        if hi:
            if _cmp(v, lo_k) >= 0 and _cmp(v, _version_key(hi)) <= 0:
                return True
            continue
        c = _cmp(v, lo_k)
        if {None: c == 0, "==": c == 0, ">=": c >= 0, "<=": c <= 0, ">": c > 0, "<": c < 0}[op]:
            return True
    return False


def _load_one(path: Path) -> Entry:
    where = f"{path.relative_to(ROOT.parent)}"
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CorpusError(f"{where}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise CorpusError(f"{where}: an entry is a mapping")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise CorpusError(f"{where}: unknown field(s) {sorted(unknown)}")
    area = doc.get("area")
    if area not in AREAS or path.parent.name != area:
        raise CorpusError(f"{where}: area {area!r} must be one of {AREAS} and match its folder")
    status = doc.get("status")
    if status not in STATUSES:
        raise CorpusError(f"{where}: status {status!r} must be one of {STATUSES}")
    sources = doc.get("sources") or []
    if not isinstance(sources, list) or not all(isinstance(s, dict) and s.get("ref") for s in sources):
        raise CorpusError(f"{where}: sources is a list of {{ref, says}}")
    if status != "unconfirmed" and not sources:
        raise CorpusError(f"{where}: a {status} entry names at least one source")
    if status != "confirmed" and not doc.get("note"):
        raise CorpusError(f"{where}: a {status} entry says in `note` what is uncertain")
    answer = doc.get("answer") or {}
    if not isinstance(answer, dict):
        raise CorpusError(f"{where}: answer is a mapping")
    versions = str(doc.get("versions", "any"))
    try:
        version_in("1.0", versions)
    except ValueError as exc:
        raise CorpusError(f"{where}: versions: {exc}") from None
    return Entry(id=path.stem, area=area, families=tuple(doc.get("families") or ()), versions=versions,
                 status=status, sources=tuple(Source(str(s["ref"]), str(s.get("says", ""))) for s in sources),
                 note=str(doc.get("note", "")), request=dict(doc.get("request") or {}), answer=answer,
                 variant_of=str(doc.get("variant_of") or ""), path=path)


@lru_cache(maxsize=1)
def entries() -> tuple[Entry, ...]:
    """Every entry, sorted by id; raises CorpusError naming the first malformed file."""
    found = sorted(ROOT.glob("*/*.yml"))
    out = tuple(_load_one(p) for p in found)
    ids = [e.id for e in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise CorpusError(f"entry ids used twice: {sorted(dup)}")
    return out


def get(entry_id: str) -> Entry:
    for e in entries():
        if e.id == entry_id:
            return e
    raise KeyError(f"no conformance entry {entry_id!r}")


def select(area: str | None = None, family: str | None = None, version: str | None = None,
           prefix: str = "") -> list[Entry]:
    """The entries of one area (and family, firmware version, id prefix)."""
    return [e for e in entries() if (area is None or e.area == area) and e.id.startswith(prefix)
            and e.applies_to(family, version)]
