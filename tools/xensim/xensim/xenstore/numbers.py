"""How each xenstored reads and prints the numbers in requests.

C xenstored 4.17 reads domids with ``atoi`` (``GET_DOMAIN_PATH``,
``INTRODUCE``, ...) and the domids of permission strings with
``strtol(p, &end, 0)``; it keeps them as ``unsigned int`` and prints them
with ``%u``. oxenstored reads most of them with OCaml's ``int_of_string``
(63-bit, ``0x``/``0o``/``0b``/``0u`` prefixes, ``_`` separators, no
whitespace), a few (``GET_DOMAIN_PATH``, ``SET_TARGET``) with its own
``c_int_of_string`` (skip to the first digit, read decimal digits) and
prints with OCaml's ``%u`` (the 63-bit value taken as unsigned).
``tests/data/real-oxenstored-probe.json`` has real oxenstored's answers.
"""

from __future__ import annotations

_C_SPACE = " \t\n\v\f\r"
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_OCAML_BITS = 63


def _digit(ch: str) -> int:
    if "0" <= ch <= "9":
        return ord(ch) - 48
    if "a" <= ch.lower() <= "z":
        return ord(ch.lower()) - 87
    return 99


def c_strtol(text: str, base: int = 10) -> tuple[int, int]:
    """glibc ``strtol``: (value clamped to long, index where parsing
    stopped; 0 when there were no digits)."""
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    if base in (0, 16) and text[i:i + 2].lower() == "0x" and i + 2 < n and _digit(text[i + 2]) < 16:
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i:i + 1] == "0" else 10
    start, value = i, 0
    while i < n and _digit(text[i]) < base:
        value = value * base + _digit(text[i])
        i += 1
    if i == start:
        return 0, 0
    return max(_LONG_MIN, min(_LONG_MAX, sign * value)), i


def c_atoi(text: str) -> int:
    """glibc ``atoi``: ``(int) strtol(text, NULL, 10)``."""
    value = c_strtol(text, 10)[0] & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def c_unsigned(value: int) -> int:
    """A C ``int`` kept as ``unsigned int`` (what ``%u`` prints)."""
    return value & 0xFFFFFFFF


def _ocaml_wrap(value: int) -> int:
    half = 1 << (_OCAML_BITS - 1)
    return ((value + half) % (1 << _OCAML_BITS)) - half


def ocaml_int_of_string(text: str) -> int:
    """OCaml's ``int_of_string`` (runtime ints.c ``parse_intnat``, 63 bits);
    ValueError where it fails (oxenstored answers EINVAL)."""
    i, n = 0, len(text)
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    base, signed = 10, True
    if text[i:i + 1] == "0" and i + 1 < n and text[i + 1] in "xXoObBuU":
        base = {"x": 16, "o": 8, "b": 2, "u": 10}[text[i + 1].lower()]
        signed, i = False, i + 2
    if i >= n or _digit(text[i]) >= base:
        raise ValueError(f"int_of_string {text!r}")
    value = 0
    while i < n:
        if text[i] != "_":
            d = _digit(text[i])
            if d >= base:
                raise ValueError(f"int_of_string {text!r}")
            value = value * base + d
            if value >= 1 << 64:
                raise ValueError(f"int_of_string {text!r}")
        i += 1
    limit = 1 << (_OCAML_BITS - 1)
    if signed and (value >= limit if sign > 0 else value > limit):
        raise ValueError(f"int_of_string {text!r}")
    if not signed and value >= 1 << _OCAML_BITS:
        raise ValueError(f"int_of_string {text!r}")
    return _ocaml_wrap(sign * value)


def ocaml_c_int_of_string(text: str) -> int:
    """oxenstored's ``c_int_of_string``: skip to the first digit, read the
    decimal digits that follow (a sign is skipped like any other char)."""
    i, n, value = 0, len(text), 0
    while i < n and not "0" <= text[i] <= "9":
        i += 1
    while i < n and "0" <= text[i] <= "9":
        value = _ocaml_wrap(value * 10 + ord(text[i]) - 48)
        i += 1
    return value


def ocaml_unsigned(value: int) -> int:
    """What OCaml's ``Printf "%u"`` prints for an int."""
    return value % (1 << _OCAML_BITS)
