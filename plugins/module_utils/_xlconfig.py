# Copyright (c) 2026, xen.pci contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xl domain config files (xl.cfg(5)): parse, and edit the PCI settings in place.

The syntax is libxlu's (libxlu_cfg_l.l / libxlu_cfg_y.y)::

    file    := (setting? (NEWLINE | ';'))* setting?
    setting := key ('=' | '+=') value
    value   := STRING | NUMBER | '[' NL* (value NL* (',' NL* value NL*)* (',' NL*)?)? ']'
    key     := [a-z][._0-9a-z]*          NUMBER := [0-9][0-9a-fx]*
    STRING  := '...' or "..." on one line, backslash escapes
    comment := '#' to the end of the line; blanks are spaces and tabs only

Like libxlu: the last setting of a key wins, ``+=`` appends to the one
before, a carriage return is an error (xl rejects CRLF files), list items
may be lists. Unlike libxlu we accept a final comment without a newline.

Edits are splices of the original text: only the value of a changed
setting is rewritten, new settings are appended, and every other byte
(comments, blank lines, order, quoting) is kept. A rewritten ``pci`` list
keeps the text and comments of the items that stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import List, Optional, Union

from ansible_collections.xen.pci.plugins.module_utils._bdf import PciSpec, parse_specs
from ansible_collections.xen.pci.plugins.module_utils._errors import SpecError

# The global settings next to `pci` that domain_config keeps, and how xl reads them.
BOOL_KEYS = ("pci_permissive", "pci_msitranslate", "pci_power_mgmt", "pci_seize", "e820_host")
PASSTHROUGH_MODES = ("enabled", "disabled", "sync_pt", "share_pt")
GLOBAL_ORDER = ("passthrough",) + BOOL_KEYS
# pci_<x> globals -> the PciSpec option they default.
_SPEC_DEFAULT_KEYS = {"pci_permissive": "permissive", "pci_msitranslate": "msitranslate",
                      "pci_power_mgmt": "power_mgmt", "pci_seize": "seize"}

_IDENT = re.compile(r"[a-z][._0-9a-z]*")
_NUMBER = re.compile(r"[0-9][0-9a-fx]*")
_BLANKS = re.compile(r"[ \t]+")
# strtol(s, &ep, 0) accepting the whole string, as xlu_cfg_get_long requires.
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class XlConfigError(SpecError):
    """A config file xl would not read the way we need; names line and column."""


# -- the tree ---------------------------------------------------------------


@dataclass
class Atom:
    """A string or number: ``raw`` as written, ``value`` as xl reads it."""

    kind: str                 # "string" | "number"
    raw: str
    value: str
    start: int
    end: int
    line: int
    column: int

    @property
    def quote(self):
        return self.raw[0] if self.kind == "string" else None


@dataclass
class ListItem:
    value: Union[Atom, "ListValue"]
    leading: List[str] = field(default_factory=list)    # comment lines just above it
    trailing: Optional[str] = None                      # comment at the end of its line
    gap: str = "  "                                     # blanks before that comment


@dataclass
class ListValue:
    start: int
    end: int
    line: int
    column: int
    items: List[ListItem] = field(default_factory=list)
    tail: List[str] = field(default_factory=list)       # comment lines after the last item


@dataclass
class Setting:
    key: str
    op: str                   # "=" | "+="
    value: Union[Atom, ListValue]
    start: int                # offset of the key
    line: int
    column: int
    spaced: bool              # blanks around the operator


@dataclass
class Token:
    kind: str                 # ident number string , [ ] = += ; newline comment eof
    text: str
    start: int
    end: int


class XlConfig:
    """A parsed xl config file; ``text`` is kept as read."""

    def __init__(self, text, source="<config>"):
        self.text = text
        self.source = source
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.settings: List[Setting] = []
        self._tokens = self._lex()
        self._pos = 0
        self._parse()

    @classmethod
    def parse(cls, text, source="<config>"):
        return cls(text, source)

    # -- positions and errors ------------------------------------------------

    def where(self, offset):
        """(line, column), both from 1."""
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - self._line_starts[lo] + 1

    def error(self, offset, reason, **details):
        line, column = self.where(offset)
        return XlConfigError("%s: line %d, column %d: %s" % (self.source, line, column, reason),
                             path=self.source, line=line, column=column, **details)

    def line_start(self, offset):
        """Offset of the start of the line holding ``offset``."""
        return self._line_starts[self.where(offset)[0] - 1]

    def line_indent(self, offset):
        return re.match(r"[ \t]*", self.text[self.line_start(offset):]).group(0)

    # -- lexer ---------------------------------------------------------------

    def _lex(self):
        text, pos, out = self.text, 0, []
        while pos < len(text):
            char = text[pos]
            match = _BLANKS.match(text, pos)
            if match:
                pos = match.end()
                continue
            if char == "\n":
                out.append(Token("newline", char, pos, pos + 1))
                pos += 1
                continue
            if char == "#":
                end = text.find("\n", pos)
                end = len(text) if end < 0 else end
                out.append(Token("comment", text[pos:end], pos, end))
                pos = end
                continue
            match = _IDENT.match(text, pos) or _NUMBER.match(text, pos)
            if match:
                out.append(Token("ident" if char.isalpha() else "number", match.group(0), pos, match.end()))
                pos = match.end()
                continue
            if char in "'\"":
                end = self._string_end(pos)
                out.append(Token("string", text[pos:end], pos, end))
                pos = end
                continue
            if text.startswith("+=", pos):
                out.append(Token("+=", "+=", pos, pos + 2))
                pos += 2
                continue
            if char in ",[]=;":
                out.append(Token(char, char, pos, pos + 1))
                pos += 1
                continue
            raise self.error(pos, self._lexical_reason(char), token=char)
        out.append(Token("eof", "", len(text), len(text)))
        return out

    def _string_end(self, pos):
        quote, text, i = self.text[pos], self.text, pos + 1
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
                i += 2
                continue
            if char == quote:
                return i + 1
            if char == "\n":
                break
            i += 1
        raise self.error(pos, "unterminated string (a string ends on the line it starts)", token=text[pos:i])

    @staticmethod
    def _lexical_reason(char):
        if char == "\r":
            return "carriage return: xl reads only \\n line ends (convert the file from CRLF)"
        if char.isalpha():
            return "unexpected character %r (keys are lower case, strings are quoted)" % char
        if char in "+-.():":
            return "unexpected character %r (values are quoted strings, numbers or [lists]; this looks like Python)" % char
        return "unexpected character %r" % char

    # -- parser --------------------------------------------------------------

    def _peek(self):
        return self._tokens[self._pos]

    def _next(self):
        tok = self._tokens[self._pos]
        self._pos += 1
        return tok

    def _parse(self):
        while True:
            tok = self._peek()
            if tok.kind == "eof":
                return
            if tok.kind in ("newline", ";", "comment"):
                self._next()
                continue
            if tok.kind != "ident":
                raise self.error(tok.start, "expected a setting (key = value), found %r" % tok.text, token=tok.text)
            self.settings.append(self._setting())
            end = self._peek()
            if end.kind not in ("newline", ";", "comment", "eof"):
                raise self.error(end.start, "expected the end of the line or ';' after the value of %s, found %r"
                                 % (self.settings[-1].key, end.text), token=end.text)

    def _setting(self):
        key = self._next()
        op = self._next()
        if op.kind not in ("=", "+="):
            raise self.error(op.start, "expected '=' or '+=' after %s, found %r" % (key.text, op.text or "end of file"),
                             token=op.text)
        spaced = self.text[key.end:op.start] != "" or self.text[op.end:op.end + 1] in (" ", "\t")
        line, column = self.where(key.start)
        return Setting(key=key.text, op=op.kind, value=self._value(), start=key.start, line=line, column=column, spaced=spaced)

    def _atom(self, tok):
        line, column = self.where(tok.start)
        value = self._dequote(tok) if tok.kind == "string" else tok.text
        return Atom(kind=tok.kind, raw=tok.text, value=value, start=tok.start, end=tok.end, line=line, column=column)

    def _value(self):
        tok = self._next()
        if tok.kind in ("string", "number"):
            return self._atom(tok)
        if tok.kind == "[":
            return self._list(tok)
        raise self.error(tok.start, "expected a value (a quoted string, a number or a [list]), found %r"
                         % (tok.text or "end of file"), token=tok.text)

    def _skip_lines(self, comments, after_line=None, item=None):
        """Skip newlines and comments inside a list; a comment on ``after_line``
        goes to ``item.trailing``, the others to ``comments``."""
        while self._peek().kind in ("newline", "comment"):
            tok = self._next()
            if tok.kind != "comment":
                continue
            if item is not None and item.trailing is None and self.where(tok.start)[0] == after_line:
                item.trailing = tok.text
                item.gap = self.text[self._tokens[self._pos - 2].end:tok.start] or " "
            else:
                comments.append(tok.text)

    def _list(self, open_tok):
        line, column = self.where(open_tok.start)
        lst = ListValue(start=open_tok.start, end=open_tok.end, line=line, column=column)
        pending: List[str] = []
        self._skip_lines(pending)
        if self._peek().kind == "]":
            lst.end = self._next().end
            lst.tail = pending
            return lst
        while True:
            if self._peek().kind == "eof":
                raise self.error(open_tok.start, "unterminated list: '[' has no ']'", token="[")
            item = ListItem(value=self._value(), leading=pending)
            pending = []
            lst.items.append(item)
            end_line = self.where(item.value.end - 1)[0]
            self._skip_lines(pending, end_line, item)
            tok = self._next()
            if tok.kind == ",":
                self._skip_lines(pending, end_line, item)
                if self._peek().kind == "]":
                    lst.end = self._next().end
                    break
                continue
            if tok.kind == "]":
                lst.end = tok.end
                break
            if tok.kind == "eof":
                raise self.error(open_tok.start, "unterminated list: '[' has no ']'", token="[")
            raise self.error(tok.start, "expected ',' or ']' in the list, found %r" % tok.text, token=tok.text)
        lst.tail = pending
        return lst

    def _dequote(self, tok):
        raw, out, i = tok.text[1:-1], [], 0
        while i < len(raw):
            char = raw[i]
            if char != "\\":
                out.append(char)
                i += 1
                continue
            nxt = raw[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            elif nxt == "x" and re.match(r"[0-9a-fA-F]{2}", raw[i + 2:i + 4]):
                out.append(chr(int(raw[i + 2:i + 4], 16)))
                i += 4
            elif nxt in "01234567":
                digits = re.match(r"[0-7]{1,3}", raw[i + 1:]).group(0)
                out.append(chr(int(digits, 8)))
                i += 1 + len(digits)
            else:
                raise self.error(tok.start + 1 + i, "invalid escape \\%s in a string" % nxt, token="\\" + nxt)
        return "".join(out)

    # -- reading -------------------------------------------------------------

    def last(self, key):
        """The setting of ``key`` that xl uses (the last one), or None."""
        for setting in reversed(self.settings):
            if setting.key == key:
                return setting
        return None

    def quote_style(self):
        """The quote most strings of the file use (``"`` for an empty file)."""
        counts = {"'": 0, '"': 0}
        for setting in self.settings:
            for atom in _atoms(setting.value):
                if atom.kind == "string":
                    counts[atom.quote] += 1
        return "'" if counts["'"] > counts['"'] else '"'

    def spaced(self):
        return self.settings[0].spaced if self.settings else True


def _atoms(value):
    if isinstance(value, Atom):
        yield value
        return
    for item in value.items:
        yield from _atoms(item.value)


def strtol(text):
    """The number xl's xlu_cfg_get_long reads from ``text``, or None if it is not one."""
    match = _STRTOL.match(text)
    if not match:
        return None
    digits = match.group(2)
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if len(digits) > 1 else int(digits)
    return -value if match.group(1) == "-" else value


def quote(value, quote_char='"'):
    """A string atom xl reads back as ``value``."""
    if "\n" in value:
        value = value.replace("\n", "\\n")
    escaped = value.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
    return quote_char + escaped + quote_char


# -- PCI edits ----------------------------------------------------------------


@dataclass
class _Entry:
    """One item of the pci list being built: kept text, or a new spec."""

    spec: PciSpec
    raw: Optional[str] = None               # the original atom text when kept as it was
    leading: List[str] = field(default_factory=list)
    trailing: Optional[str] = None
    gap: str = "  "


@dataclass
class Edit:
    """The outcome of ``edit_pci_config``: the new text and what changed."""

    text: str
    actions: List[str]
    devices: List[str]
    settings: dict

    @property
    def changed(self):
        return bool(self.actions)


def _spec_key(spec):
    return ("name", spec.name) if spec.name is not None else ("bdf", spec.address)


def _key_label(key):
    return "name=%s" % key[1] if key[0] == "name" else key[1]


def _canonical(spec, defaults):
    spec = spec.with_defaults(**defaults)
    return replace(spec, vslot=None) if spec.vslot == 0 else spec


def _flag_of(cfg, key):
    """A boolean global as xl reads it: True/False, or None when unset or unreadable."""
    setting = cfg.last(key)
    if setting is None or setting.op != "=" or not isinstance(setting.value, Atom):
        return None
    number = strtol(setting.value.value)
    return None if number is None else number != 0


def _rdm_policy(cfg):
    setting = cfg.last("rdm")
    if setting is None or not isinstance(setting.value, Atom):
        return None
    for part in setting.value.value.split(","):
        key, _eq, value = part.strip().partition("=")
        if key == "policy" and value.lower() in ("strict", "relaxed"):
            return value.lower()
    return None


def _pci_items(cfg):
    """The pci setting to edit and its parsed items [(ListItem, PciSpec)]."""
    setting = cfg.last("pci")
    if setting is None:
        return None, []
    later_add = [s for s in cfg.settings if s.key == "pci" and s.op == "+=" and s.start >= _last_assign_start(cfg, "pci")]
    if later_add:
        raise cfg.error(later_add[0].start, "pci is extended with '+=' here; keep the devices in one pci = [...] list "
                        "so that it can be kept in step", token="+=")
    if not isinstance(setting.value, ListValue):
        raise cfg.error(setting.value.start, "pci must be a [list] of PCI spec strings (xl ignores a single value)",
                        token=setting.value.raw)
    out = []
    for item in setting.value.items:
        value = item.value
        if not isinstance(value, Atom) or value.kind != "string":
            start = value.start
            raise cfg.error(start, "pci items must be quoted PCI spec strings", token=cfg.text[start:value.end])
        try:
            spec = PciSpec.parse(value.value)
        except SpecError as exc:
            raise cfg.error(value.start, exc.msg, spec=value.value) from None
        out.append((item, spec))
    return setting, out


def pci_addresses(cfg):
    """The addresses the pci list of ``cfg`` names (not its names)."""
    _setting, items = _pci_items(cfg)
    return [spec.address for _item, spec in items if spec.address]


def _last_assign_start(cfg, key):
    starts = [s.start for s in cfg.settings if s.key == key and s.op == "="]
    return starts[-1] if starts else -1


def _format_list(cfg, setting, entries, quote_char):
    """The new text of the pci value: one line, or one item per line if it
    was written over several lines (items keep their comments)."""
    atoms = [e.raw if e.raw is not None else quote(e.spec.format(), quote_char) for e in entries]
    old = setting.value if setting is not None else None
    multiline = old is not None and "\n" in cfg.text[old.start:old.end]
    if not multiline:
        if not atoms:
            return "[]"
        pad = " " if old is not None and cfg.text[old.start + 1:old.start + 2] == " " else ""
        return "[" + pad + ", ".join(atoms) + pad + "]"
    base = cfg.line_indent(setting.start)
    indent = None
    for item in old.items:
        first = item.value.start
        if cfg.text[cfg.line_start(first):first].strip() == "":
            indent = cfg.line_indent(first)
            break
    if indent is None:
        indent = base + "    "
    lines = ["["]
    for entry, atom in zip(entries, atoms):
        lines += [indent + c for c in entry.leading]
        lines.append(indent + atom + "," + (entry.gap + entry.trailing if entry.trailing else ""))
    lines += [indent + c for c in old.tail]
    close = old.end - 1
    before_close = cfg.text[cfg.line_start(close):close]
    lines.append((before_close if before_close.strip() == "" else base) + "]")
    return "\n".join(lines)


def _wanted_atom(cfg, key, value, existing=None):
    if key == "passthrough":
        q = existing.quote if existing is not None and existing.kind == "string" else cfg.quote_style()
        return quote(value, q)
    return "1" if value else "0"


def edit_pci_config(text, devices=None, state="present", settings=None, source="<config>"):
    """Bring the pci list (and the ``settings`` globals) of an xl config in
    step with ``devices`` (PciSpec or spec strings/dicts; None leaves the list
    alone). ``state``: present (add or fix these), absent (remove these),
    exact (these and no others). Returns an Edit; the text is unchanged when
    nothing differs."""
    if state not in ("present", "absent", "exact"):
        raise SpecError("state must be present, absent or exact, not %r" % (state,))
    settings = dict(settings or {})
    for key, value in settings.items():
        if key == "passthrough":
            if value not in PASSTHROUGH_MODES:
                raise SpecError("passthrough must be one of %s, not %r" % (", ".join(PASSTHROUGH_MODES), value), key=key)
        elif key in BOOL_KEYS:
            if not isinstance(value, bool):
                raise SpecError("%s must be a boolean, not %r" % (key, value), key=key)
        else:
            raise SpecError("unknown setting %r (known: %s)" % (key, ", ".join(GLOBAL_ORDER)), key=key)
    cfg = XlConfig.parse(text, source)
    edits = []          # (start, end, replacement)
    appended = []
    actions = []
    new_style = cfg.quote_style()
    eq = " = " if cfg.spaced() else "="

    # Globals first: the pci items' defaults depend on them.
    effective = {}
    for key in GLOBAL_ORDER:
        if key not in settings:
            continue
        wanted = settings[key]
        setting = cfg.last(key)
        if setting is not None and setting.op == "+=":
            raise cfg.error(setting.start, "%s is set with '+=', which xl does not read for this setting; use %s = ..."
                            % (key, key), token="+=")
        if setting is None:
            appended.append("%s%s%s" % (key, eq, _wanted_atom(cfg, key, wanted)))
            actions.append("set %s to %s" % (key, _shown(key, wanted)))
        else:
            atom = setting.value if isinstance(setting.value, Atom) else None
            if key == "passthrough":
                same = atom is not None and atom.value.lower() == wanted
            else:
                number = strtol(atom.value) if atom is not None else None
                same = number is not None and (number != 0) == wanted
            if not same:
                edits.append((setting.value.start, setting.value.end, _wanted_atom(cfg, key, wanted, atom)))
                shown = cfg.text[setting.value.start:setting.value.end]
                actions.append("change %s from %s to %s (line %d)" % (key, shown, _shown(key, wanted), setting.line))
        effective[key] = wanted

    defaults = {}
    for key, option in _SPEC_DEFAULT_KEYS.items():
        value = effective[key] if key in effective else _flag_of(cfg, key)
        if value is not None:
            defaults[option] = value
    policy = _rdm_policy(cfg)
    if policy is not None:
        defaults["rdm_policy"] = policy

    setting, items = _pci_items(cfg)
    entries = [_Entry(spec=spec, raw=item.value.raw, leading=list(item.leading), trailing=item.trailing, gap=item.gap)
               for item, spec in items]
    result_entries = entries
    if devices is not None:
        wanted = parse_specs(devices)
        keys = {}
        for index, spec in enumerate(wanted):
            key = _spec_key(spec)
            if key in keys:
                raise SpecError("device #%d: %s is already given by device #%d" % (index, _key_label(key), keys[key]), index=index)
            keys[key] = index
        result_entries, pci_actions = _merge(entries, wanted, state, defaults)
        if pci_actions:
            actions += pci_actions
            quote_char = next((e.raw[0] for e in entries if e.raw), None) or new_style
            new_value = _format_list(cfg, setting, result_entries, quote_char)
            if setting is not None:
                edits.append((setting.value.start, setting.value.end, new_value))
            else:
                appended.insert(0, "pci%s%s" % (eq, new_value))

    new_text = text
    for start, end, replacement in sorted(edits, reverse=True):
        new_text = new_text[:start] + replacement + new_text[end:]
    if appended:
        if new_text and not new_text.endswith("\n"):
            new_text += "\n"
        new_text += "".join(line + "\n" for line in appended)
    out_settings = {key: effective.get(key) for key in GLOBAL_ORDER if key in effective}
    return Edit(text=new_text, actions=actions, devices=[e.spec.format() for e in result_entries], settings=out_settings)


def _shown(key, value):
    return value if key == "passthrough" else "1" if value else "0"


def _merge(entries, wanted, state, defaults):
    """The new item list and the actions that lead to it."""
    actions = []
    by_key = {_spec_key(spec): spec for spec in wanted}
    out = []
    seen = set()
    for entry in entries:
        key = _spec_key(entry.spec)
        if key not in by_key:
            if state == "exact":
                actions.append("remove %s from pci" % entry.spec.format())
                continue
            out.append(entry)
            continue
        if state == "absent":
            actions.append("remove %s from pci" % entry.spec.format())
            continue
        if key in seen:
            # xl would attach it twice (and fail the second time).
            actions.append("remove the duplicate %s from pci" % entry.spec.format())
            continue
        seen.add(key)
        spec = by_key[key]
        if _canonical(entry.spec, defaults) != _canonical(spec, defaults):
            actions.append("change %s to %s in pci" % (entry.spec.format(), spec.format()))
            out.append(_Entry(spec=spec, leading=entry.leading, trailing=entry.trailing, gap=entry.gap))
        else:
            out.append(entry)
    if state != "absent":
        for spec in wanted:
            if _spec_key(spec) not in seen:
                actions.append("add %s to pci" % spec.format())
                out.append(_Entry(spec=spec))
    return out, actions
