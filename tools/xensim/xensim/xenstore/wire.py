"""xs_wire codec (xen/include/public/io/xs_wire.h).

A message is a 16-byte little-endian header ``type, req_id, tx_id, len``
followed by ``len`` bytes of payload (at most 4096), usually NUL-terminated
strings.
"""

from __future__ import annotations

import enum
import struct

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096


class Op(enum.IntEnum):
    CONTROL = 0          # alias DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed; XS_RESET_WATCHES = XS_SET_TARGET + 2
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# Errors a daemon may send (xsd_errors[]): the payload is the name + NUL.
ERRORS = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
          "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")


class WireError(Exception):
    """Malformed traffic: the daemon drops such a client."""


def encode(op: int, req_id: int, tx_id: int, payload: bytes = b"") -> bytes:
    if len(payload) > PAYLOAD_MAX:
        raise WireError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}")
    return HEADER.pack(int(op), req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    op, req_id, tx_id, length = HEADER.unpack(data[:HEADER_SIZE])
    if length > PAYLOAD_MAX:
        raise WireError(f"payload length {length} exceeds {PAYLOAD_MAX}")
    return op, req_id, tx_id, length


def op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"OP{op}"


def split_strings(payload: bytes) -> list[bytes]:
    """NUL-separated strings; a final unterminated piece is kept (WRITE's value)."""
    parts = payload.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def count_strings(payload: bytes) -> int:
    """xs_count_strings: number of NUL terminators."""
    return payload.count(b"\0")


def onearg(payload: bytes) -> str | None:
    """xenstored onearg(): exactly one NUL, at the end; else None (EINVAL)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1].decode("utf-8", "surrogateescape")


def strings(items) -> bytes:
    """Each item NUL-terminated (DIRECTORY, GET_PERMS replies, SET_PERMS args)."""
    return b"".join((s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s) + b"\0" for s in items)


def ok_reply() -> bytes:
    return b"OK\0"


def error_payload(name: str) -> bytes:
    return name.encode() + b"\0"


def watch_event_payload(path: str, token: str) -> bytes:
    return path.encode("utf-8", "surrogateescape") + b"\0" + token.encode("utf-8", "surrogateescape") + b"\0"
