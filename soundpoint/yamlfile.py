"""Load a YAML file into a pydantic model, with errors that name the file, line and field.

Users edit inventories, playbooks and lab files by hand; an error that says
`site.yml:14: sites[0].phones[3].mac: ...` saves them the search.

The loader is also the first line of defence against files that are not what
they claim to be. Before any Python object is built it refuses:
- files larger than `MAX_BYTES` (so `--inventory /dev/zero` ends in an error, not a hang);
- bytes that are not UTF-8 (naming the byte offset and line);
- a key given twice in one mapping (YAML keeps the last one silently; `max_duration: 120`
  followed by `max_duration: 86400` would arm a one-day dead-man's switch), naming both lines;
- alias and merge-key expansion beyond a node budget (a 1 KB "billion laughs" document
  would otherwise take gigabytes once anything walks it), and recursive aliases.

`read()` and `read_mapping()` are reusable by anything else that reads YAML
(the scheduler, the secrets file) so that every file gets the same checks.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from soundpoint.fileerror import FieldError, FileError  # noqa: F401  (re-exported: where every reader imports them)

M = TypeVar("M", bound=BaseModel)

MAX_BYTES = int(os.environ.get("FLEET_MAX_YAML_BYTES", str(32 * 1024 * 1024)))
# nodes that aliases may add on top of the document's own nodes; a document may also expand to at most
# twice its own size (an anchor of phone defaults merged into every phone of a 50,000-phone inventory fits)
ALIAS_EXPANSION_MIN = 100_000
_CAP = 1 << 62     # expanded sizes are counted up to here (an alias bomb's true size has hundreds of digits)


def _node_at(node: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The deepest YAML node along `loc` (keys and list indices)."""
    best = node
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    nxt = v
                    break
            if nxt is None:
                return best
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
        else:
            return best
        best = node
    return best


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|constrained-\w+|function-.*|step:.*|\[key\]|"
                       r"(list|dict|tuple|set|literal|union|tagged-union|nullable|json-or-python)\[.*)$")


def clean_loc(loc: tuple) -> tuple:
    """pydantic's error location without the type tags it inserts for unions and validators."""
    return tuple(p for p in loc if not (isinstance(p, str) and _TYPE_TAG.match(p)))


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out




class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser where it is installed (a 1,000-phone inventory: 0.1 s instead of 1 s)."""

    def construct_object(self, node, deep=False):
        # Scalars that match a YAML type but overflow Python (a 5,000-digit integer, 2024-02-30 as a
        # timestamp) raise plain ValueErrors deep in the constructor; give them the node's line.
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({exc})", node.start_mark) from None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _read_text(path: Path, max_bytes: int) -> str:
    try:
        with open(path, "rb") as fh:
            if os.path.isdir(path):
                raise IsADirectoryError
            chunks, size = [], 0
            while size <= max_bytes:      # in chunks: read(max_bytes) would allocate max_bytes up front
                chunk = fh.read(min(1 << 20, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            raw = b"".join(chunks)
    except FileNotFoundError:
        raise FileError(path, None, "", "file not found") from None
    except IsADirectoryError:
        raise FileError(path, None, "", "is a directory, not a file") from None
    except OSError as exc:
        raise FileError(path, None, "", f"cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > max_bytes:
        raise FileError(path, None, "", f"larger than {max_bytes} bytes; not an input file this tool reads")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FileError(path, line, "", f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None


_STR_TAG = "tag:yaml.org,2002:str"


def _scalar_key(constructor: Any, node: yaml.Node) -> Any:
    """A mapping key as Python will see it (`yes` and `true` are one key), or its text if that fails."""
    if node.tag == _STR_TAG:
        return node.value
    try:
        return (node.tag, constructor.construct_object(node))
    except Exception:
        return (node.tag, node.value)


def _check_keys(path: str | Path, node: yaml.MappingNode, loc: tuple, constructor: Any) -> None:
    seen: dict[Any, yaml.Node] = {}
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode):
            key = _scalar_key(constructor, k)
            first = seen.setdefault(key, k)
            if first is not k:
                raise FileError(path, _line(k), format_loc(loc + (k.value,)),
                                f"key given twice (lines {_line(first)} and {_line(k)}); YAML would silently keep the last one")


def check_tree(path: str | Path, root: yaml.Node | None, limit: int | None = None, constructor: Any = None,
               aliases: bool = True) -> None:
    """Refuse duplicate keys, recursive aliases and an alias expansion beyond the budget.

    Linear in the number of distinct nodes: each node's expanded size is computed once (memoised by
    identity), so an alias bomb costs as much as its text, not as much as its expansion.
    aliases=False: the text has no `*`, so no node is shared and only duplicate keys need looking for.
    """
    if root is None:
        return
    constructor = constructor or yaml.constructor.SafeConstructor()
    if not aliases:
        todo: list[tuple[yaml.Node, tuple]] = [(root, ())]
        while todo:
            node, loc = todo.pop()
            if isinstance(node, yaml.MappingNode):
                _check_keys(path, node, loc, constructor)
                todo.extend((v, loc + (k.value if isinstance(k, yaml.ScalarNode) else "?",)) for k, v in node.value
                            if not isinstance(v, yaml.ScalarNode))
            elif isinstance(node, yaml.SequenceNode):
                todo.extend((v, loc + (i,)) for i, v in enumerate(node.value) if not isinstance(v, yaml.ScalarNode))
        return
    size: dict[int, int] = {}
    on_stack: set[int] = set()
    distinct = 0
    # iterative DFS: (node, loc, children-done?)
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    budget = limit
    checked_keys: set[int] = set()
    while stack:
        node, loc, done = stack.pop()
        nid = id(node)
        if done:
            on_stack.discard(nid)
            total = 1
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    total += size[id(k)] + size[id(v)]
            elif isinstance(node, yaml.SequenceNode):
                for v in node.value:
                    total += size[id(v)]
            size[nid] = min(total, _CAP)
            if budget is not None and total > budget:
                raise FileError(path, _line(node), format_loc(loc),
                                f"aliases expand to more than {budget} nodes (an alias bomb?); write the values out")
            continue
        if nid in size:
            continue
        if nid in on_stack:
            raise FileError(path, _line(node), format_loc(loc), "recursive alias (a node that contains itself)")
        distinct += 1
        on_stack.add(nid)
        stack.append((node, loc, True))
        if isinstance(node, yaml.MappingNode):
            if nid not in checked_keys:
                checked_keys.add(nid)
                _check_keys(path, node, loc, constructor)
            for k, v in reversed(node.value):
                kname = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack.append((v, loc + (kname,), False))
                stack.append((k, loc, False))
        elif isinstance(node, yaml.SequenceNode):
            for i in range(len(node.value) - 1, -1, -1):
                stack.append((node.value[i], loc + (i,), False))
    # the budget depends on the document's own size: computed now, checked on the root
    allowed = max(ALIAS_EXPANSION_MIN + distinct, 2 * distinct) if limit is None else limit
    if size.get(id(root), 0) > allowed:
        # find the smallest node over the budget for a precise line: walk down the largest child
        node, loc = root, ()
        while True:
            children: list[tuple[yaml.Node, tuple]] = []
            if isinstance(node, yaml.MappingNode):
                children = [(v, loc + (k.value if isinstance(k, yaml.ScalarNode) else "?",)) for k, v in node.value]
            elif isinstance(node, yaml.SequenceNode):
                children = [(v, loc + (i,)) for i, v in enumerate(node.value)]
            over = [(c, cl) for c, cl in children if size[id(c)] > allowed]
            if not over:
                break
            node, loc = over[0]
        raise FileError(path, _line(node), format_loc(loc),
                        f"aliases expand to more than {allowed} nodes (an alias bomb?); write the values out")


def read(path: str | Path, max_bytes: int | None = None, quiet: bool = False) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document safely; returns the data and the node tree its line numbers come from.

    quiet: leave the parser's description of the problem out of errors (a secrets file: it may quote a secret).
    """
    path = Path(path)
    text = _read_text(path, MAX_BYTES if max_bytes is None else max_bytes)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        # node budget: checked on the composed tree (anchors shared, nothing expanded yet), before
        # any Python object or model exists
        check_tree(path, node, constructor=loader, aliases="*" in text)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        if line is None and isinstance(getattr(exc, "position", None), int):   # reader errors: a bad character
            line = text.count("\n", 0, exc.position) + 1
        if isinstance(exc, yaml.reader.ReaderError):
            problem = f"character #x{exc.character:04x} is not allowed in YAML" if isinstance(exc.character, int) else "bad character"
        else:
            problem = str(getattr(exc, "problem", None) or exc)
        problem = "" if quiet else f" ({problem})"
        raise FileError(path, line, "", f"not valid YAML{problem}") from None
    except RecursionError:
        raise FileError(path, None, "", "nested too deeply") from None
    finally:
        loader.dispose()
    return data, node


def read_mapping(path: str | Path, quiet: bool = False) -> tuple[dict, yaml.Node | None]:
    """read() for files whose top level must be a mapping (every input file: inventories, playbooks, lab and secrets files)."""
    data, node = read(path, quiet=quiet)
    if not isinstance(data, dict):
        raise FileError(path, 1, "", f"expected a mapping at the top level, found {type(data).__name__}")
    return data, node


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    target = _node_at(node, loc)
    return target.start_mark.line + 1 if target is not None else None


def error_at(path: str | Path, node: yaml.Node | None, loc: tuple, message: str) -> FileError:
    """A FileError for the field at `loc`, with its line from the node tree."""
    loc = clean_loc(tuple(loc))
    return FileError(path, line_of(node, loc), format_loc(loc), message)


def _first_error(exc: ValidationError) -> tuple[tuple, str]:
    errors = exc.errors()
    # an unknown field is usually a misspelt known one; name it rather than the "missing" field it causes
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc, msg = loc + cause.loc, str(cause)
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if len(exc.errors()) > 1:
        msg += f" (and {len(exc.errors()) - 1} more error(s))"
    return clean_loc(loc), msg


class Source:
    """Where a model came from: the file and its node tree, for cross-checks that need line numbers later."""

    def __init__(self, path: str | Path, node: yaml.Node | None) -> None:
        self.path, self.node = str(path), node

    def error(self, loc: tuple, message: str) -> FileError:
        return error_at(self.path, self.node, loc, message)


def load_model(path: str | Path, model: type[M], context: dict | None = None,
               checks: Callable[[M], None] | None = None, keep_source: bool = False) -> M:
    """Validate a file against `model`; `checks(model)` may raise FieldError with a loc from the top.

    keep_source: remember the node tree on the model (`source_of(model)`) for later cross-checks.
    """
    data, node = read_mapping(path)
    try:
        obj = model.model_validate(data, context=context)
    except ValidationError as exc:
        loc, msg = _first_error(exc)
        raise FileError(path, line_of(node, loc), format_loc(loc), msg) from None
    if checks is not None:
        try:
            checks(obj)
        except FieldError as exc:
            raise error_at(path, node, exc.loc, str(exc)) from None
    if keep_source:
        remember_source(obj, Source(path, node))
    return obj


_SOURCES: dict[int, tuple[Any, Source]] = {}


def remember_source(obj: BaseModel, src: Source) -> None:
    """Keep `src` for `obj` (the pair holds a reference to obj, so its id cannot be reused meanwhile)."""
    _SOURCES[id(obj)] = (obj, src)


def source_of(obj: BaseModel, path: str | Path | None = None) -> Source:
    """The Source recorded by load_model(keep_source=True), or one without lines for `path`."""
    entry = _SOURCES.get(id(obj))
    if entry is not None and entry[0] is obj:
        return entry[1]
    return Source(path or "", None)
