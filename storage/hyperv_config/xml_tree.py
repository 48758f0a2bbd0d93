"""The typed element tree of a Hyper-V 2012 R2 XML configuration file, read safely.

Terms:
    node      one XML element: its tag, its ``type`` attribute (if any), its text
              and its child nodes in document order. Hyper-V keeps no other
              attributes, and ckpt reads none.
    leaf      a node with a ``type`` attribute; Windows writes ``string``,
              ``integer``, ``bool`` (``True``/``False``) and ``bytes`` (base64,
              ending in a line break). docs/hyperv_xml.md names the sources.
    path      the tags from below the root, joined by ``/``: ``properties/name``.

Hostile input: the file comes from a folder a user points us at, so the parser
refuses what Hyper-V never writes instead of trusting the XML library's limits:

    - any ``<!DOCTYPE``: no entity can be declared, so none can be expanded
      (billion laughs) or fetched (external entities); parameter-entity parsing
      is off as well;
    - more than ``MAX_FILE_SIZE`` bytes, nesting deeper than ``MAX_DEPTH``, more
      than ``MAX_ELEMENTS`` elements: memory stays bounded (measured: 27 MiB
      peak and ~1 s for a file at the element cap, ~140 B a node), and so does
      the work of a reader that looks each element up a bounded number of times.

Encodings: UTF-16 with a byte order mark (Windows) and UTF-8 (see
``parse_document``).

Writing is the reverse: ``render`` produces what Windows writes, UTF-16LE with a
byte order mark, CRLF line ends and two-space indentation, escaping ``&``, ``<``,
``>`` and carriage returns, and refusing characters XML 1.0 cannot carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.parsers import expat

from ckpt.domain.errors import ConfigurationError

# Real 2012 R2 files are ~20 KB (19,331 characters for a one-disk VM in
# mwrock/packer-templates); 16 MiB leaves a factor of ~800 for many devices.
MAX_FILE_SIZE = 16 * 1024 * 1024
# Windows nests 7 levels (global_settings/metrics/devicetype/deviceinstance/
# metric/...); 32 leaves room without letting recursion-free code meet a
# pathological depth.
MAX_DEPTH = 32
# A one-disk VM has ~400 elements; 200,000 is 500 times that.
MAX_ELEMENTS = 200_000

_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;", "\n": "\r\n"}
_TO_ESCAPE = re.compile("[&<>\r\n]")


@dataclass(eq=False, slots=True)
class Node:
    tag: str
    type: str | None = None
    text: str = ""
    children: list[Node] = field(default_factory=list)
    parent: Node | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        """The tags from below the root, for messages (computed, not stored: a
        stored path would copy a long parent tag into each of its children)."""
        tags = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            tags.append(node.tag if len(node.tag) <= 60 else f"{node.tag[:57]}...")
            node = node.parent
        return "/".join(reversed(tags))

    def child(self, tag: str) -> Node | None:
        """The first child with this tag, or None."""
        for node in self.children:
            if node.tag == tag:
                return node
        return None

    def find_all(self, path: str) -> list[Node]:
        """Every node at ``path`` below this one (tags may repeat, e.g. metrics)."""
        nodes = [self]
        for tag in path.split("/"):
            nodes = [c for n in nodes for c in n.children if c.tag == tag]
        return nodes

    def add(self, tag: str, type_: str | None = None, text: str = "") -> Node:
        """Append a child and return it."""
        node = Node(tag, type_, text, [], self)
        self.children.append(node)
        return node


class _Refused(Exception):
    """Raised inside an expat handler to stop the parse."""


def parse_document(data: bytes, name: str) -> Node:
    """The root node of ``data``; ConfigurationError naming ``name`` when the
    bytes are not a well-formed XML document within the limits above."""
    if not data.strip():
        raise ConfigurationError(f"{name}: empty file, not an XML configuration")
    # UTF-16 (what Windows writes) shows by its byte order mark or a NUL in the
    # first character; anything else is read as UTF-8, whatever its declaration
    # says: a copy that went through a text tool keeps encoding="UTF-16" while
    # its bytes became UTF-8 (the Windows file in docs/hyperv_xml.md [1], as
    # stored in git, is one).
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:2]
    parser = expat.ParserCreate(None if utf16 else "utf-8")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Node] = []
    texts: list[list[str]] = []
    roots: list[Node] = []
    count = 0

    def refuse(what: str) -> None:
        raise _Refused(
            f"{what} at line {parser.CurrentLineNumber} column {parser.CurrentColumnNumber}"
        )

    def on_doctype(*_: object) -> None:
        refuse("a <!DOCTYPE> declaration (Hyper-V writes none; refused so no entity is expanded)")

    def on_entity(*_: object) -> None:
        refuse("an entity declaration")

    def on_external(*_: object) -> int:
        refuse("an external entity reference")
        return 0

    def on_start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            refuse(f"more than {MAX_ELEMENTS} elements")
        if len(stack) >= MAX_DEPTH:
            refuse(f"elements nested deeper than {MAX_DEPTH}")
        if stack:
            node = stack[-1].add(tag, attrs.get("type"))
        else:
            node = Node(tag, attrs.get("type"))
            roots.append(node)
        stack.append(node)
        texts.append([])

    def on_end(_tag: str) -> None:
        stack.pop().text = "".join(texts.pop())

    def on_text(text: str) -> None:
        if texts:
            texts[-1].append(text)

    parser.StartDoctypeDeclHandler = on_doctype
    parser.EntityDeclHandler = on_entity
    parser.ExternalEntityRefHandler = on_external
    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    parser.CharacterDataHandler = on_text
    try:
        parser.Parse(data, True)
    except _Refused as refused:
        raise ConfigurationError(f"{name}: refused: {refused}") from None
    except expat.ExpatError as error:
        reason = expat.errors.messages.get(error.code, str(error))
        raise ConfigurationError(
            f"{name}: not a well-formed XML document: {reason} at line {error.lineno} "
            f"column {error.offset}"
        ) from None
    except (ValueError, LookupError) as error:  # an encoding Python cannot give expat
        reason = " ".join(str(error).split())
        raise ConfigurationError(f"{name}: not an XML document ckpt can decode: {reason}") from None
    return roots[0]


def render(root: Node) -> bytes:
    """``root`` as Windows writes a configuration file (see the module doc)."""
    lines = ['<?xml version="1.0" encoding="UTF-16" standalone="yes"?>']
    _render(root, 0, lines)
    text = "\r\n".join(lines) + "\r\n"
    return b"\xff\xfe" + text.encode("utf-16-le")


def _render(node: Node, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    if node.type is None:
        lines.append(f"{indent}<{node.tag}>")
        for child in node.children:
            _render(child, depth + 1, lines)
        lines.append(f"{indent}</{node.tag}>")
        return
    try:
        text = escape(node.text)
    except ValueError as error:
        raise ValueError(f"{node.path}: {error}") from None
    lines.append(f'{indent}<{node.tag} type="{node.type}">{text}</{node.tag}>')


def escape(text: str) -> str:
    """``text`` as element content that parses back to exactly ``text``
    (a parser turns CR LF into LF, hence CR as ``&#13;``); ValueError for a
    character XML 1.0 cannot carry (most C0 controls, lone surrogates)."""
    bad = _NOT_XML_CHAR.search(text)
    if bad:
        raise ValueError(f"character U+{ord(bad.group()):04X} cannot be written in an XML file")
    return _TO_ESCAPE.sub(lambda m: _ESCAPES[m.group()], text)
