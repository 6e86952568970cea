"""Edge-case requests that tell xenstored implementations apart.

The same probe runs against a real daemon (in dom0 of the real-Xen VM,
``python3 probe.py /run/xenstored/socket``) and against the simulator
(``tests/test_xenstore_probe.py``), so the simulator's answers are checked
against what real Xen answered (``tests/data/real-oxenstored-probe.json``).

Self-contained (standard library only) so the file can be copied into dom0
alone. Requests go over the privileged Unix socket; everything it creates is
under ``/xensim-probe`` and removed at the end.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

HEADER = struct.Struct("<IIII")
OPS = {"DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5, "INTRODUCE": 8,
       "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
       "IS_DOMAIN_INTRODUCED": 17}
NAMES = {v: k for k, v in OPS.items()}
NAMES.update({15: "WATCH_EVENT", 16: "ERROR"})
BASE = "/xensim-probe"

# SET_PERMS second entries: how each daemon reads a domid.
PERM_DOMIDS = ["r0x1", "r010", "r 1", "r+1", "r1_0", "r-1", "r0o17", "r0b11", "r0u5", "r1 ", "r", "rx1", "r0x",
               "r4294967297"]
DOMAIN_PATH_ARGS = ["-1", "x5", " 7", "0x10", "12abc", "", "4294967297", "99999999999999999999"]
INTRODUCED_ARGS = ["0", "0x0", " 0", "+0", "32752"]


class Client:
    def __init__(self, path: str, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.req_id = 0
        self.events: list[list[str]] = []

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
        return buf

    def request(self, op: str, payload: bytes) -> list[str]:
        """[reply type, payload text] of one request; watch events that
        arrive meanwhile are kept in ``events``."""
        self.req_id += 1
        self.sock.sendall(HEADER.pack(OPS[op], self.req_id, 0, len(payload)) + payload)
        while True:
            kind, _rid, _tx, length = HEADER.unpack(self._recv_exact(HEADER.size))
            data = self._recv_exact(length) if length else b""
            text = data.decode("utf-8", "replace")
            if kind == 15:
                self.events.append(text.split("\0")[:2])
                continue
            return [NAMES.get(kind, str(kind)), text]

    def close(self) -> None:
        self.sock.close()


def z(*parts: str) -> bytes:
    """Each part NUL-terminated."""
    return b"".join(p.encode() + b"\0" for p in parts)


def run(path: str) -> dict:
    c = Client(path)
    watcher = Client(path)
    out: dict[str, list] = {}

    def ask(name: str, op: str, payload: bytes, conn: Client = c) -> list[str]:
        out[name] = conn.request(op, payload)
        return out[name]

    c.request("RM", z(BASE))
    c.request("WRITE", BASE.encode() + b"\0")
    c.request("WRITE", f"{BASE}/n".encode() + b"\0")

    # 5. permission strings
    for perm in PERM_DOMIDS:
        if ask(f"set_perms {perm!r}", "SET_PERMS", z(f"{BASE}/n", "n0", perm))[0] != "ERROR":
            ask(f"get_perms after {perm!r}", "GET_PERMS", z(f"{BASE}/n"))
        c.request("SET_PERMS", z(f"{BASE}/n", "n0"))
    # 5. GET_DOMAIN_PATH arguments
    for arg in DOMAIN_PATH_ARGS:
        ask(f"get_domain_path {arg!r}", "GET_DOMAIN_PATH", z(arg))
    ask("get_domain_path two strings", "GET_DOMAIN_PATH", z("1", "2"))
    ask("get_domain_path unterminated", "GET_DOMAIN_PATH", b"3")
    # 1. dom0 introduced
    for arg in INTRODUCED_ARGS:
        ask(f"is_domain_introduced {arg!r}", "IS_DOMAIN_INTRODUCED", z(arg))
    ask("is_domain_introduced two strings", "IS_DOMAIN_INTRODUCED", z("0", "junk"))
    ask("is_domain_introduced unterminated", "IS_DOMAIN_INTRODUCED", b"0")
    # 3. WATCH / UNWATCH argument counts
    ask("watch extra string", "WATCH", z(BASE, "tok", "extra"))
    ask("watch trailing bytes", "WATCH", z(BASE, "tok") + b"junk")
    ask("watch one string", "WATCH", z(BASE))
    ask("watch", "WATCH", z(BASE, "tok"))
    ask("unwatch extra string", "UNWATCH", z(BASE, "tok", "extra"))
    ask("unwatch trailing bytes", "UNWATCH", z(BASE, "tok") + b"junk")
    ask("unwatch", "UNWATCH", z(BASE, "tok"))
    # 4. SET_PERMS on special paths
    ask("set_perms @bogus", "SET_PERMS", z("@bogus", "n0"))
    ask("set_perms @introduceDomain", "SET_PERMS", z("@introduceDomain", "n0"))
    # 2. entry size: value length, record size, implicit parents of a refused write
    ask("write 2048 bytes", "WRITE", f"{BASE}/big".encode() + b"\0" + b"x" * 2048)
    ask("write 2049 bytes", "WRITE", f"{BASE}/big".encode() + b"\0" + b"x" * 2049)
    ask("write 2049 bytes new deep node", "WRITE", f"{BASE}/deep/er/big".encode() + b"\0" + b"x" * 2049)
    ask("directory after refused deep write", "DIRECTORY", z(f"{BASE}/deep"))
    ask("directory of implicit parent", "DIRECTORY", z(f"{BASE}/deep/er"))
    # 1. introducing dom0 again (with an mfn it does not have: no rebinding)
    watcher.request("WATCH", z("@introduceDomain", "intro"))
    ask("introduce 0 again", "INTRODUCE", z("0", "12345", "99"))
    watcher.request("READ", z(BASE))          # events fired before this reply arrive first
    out["@introduceDomain events"] = [e for e in watcher.events if e != ["@introduceDomain", "intro"]]
    watcher.request("UNWATCH", z("@introduceDomain", "intro"))

    c.request("RM", z(BASE))
    c.close()
    watcher.close()
    return out


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/run/xenstored/socket"
    json.dump(run(path), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
