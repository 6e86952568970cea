"""The simulated xenstored against real oxenstored's answers to the same
edge-case requests (xensim/probe.py, recorded on real Xen in
tests/data/real-oxenstored-probe.json), and the C xenstored 4.17 flavour
against what its code answers (xenstored_core.c, xenstored_domain.c,
xenstored_watch.c, xs_lib.c)."""

import json
import os

from xensim import probe

REAL = os.path.join(os.path.dirname(__file__), "data", "real-oxenstored-probe.json")


def real_answers():
    with open(REAL, encoding="utf-8") as fh:
        return {k: v for k, v in json.load(fh).items() if not k.startswith("_")}


def ok(op, payload="OK"):
    return [op, payload + "\0"]


def error(name):
    return ["ERROR", name + "\0"]


# Where C xenstored 4.17 answers otherwise than oxenstored, with the reason.
C_DIFFERS = {
    # atoi, then "%u" of an unsigned int
    "get_domain_path '-1'": ok("GET_DOMAIN_PATH", "/local/domain/4294967295"),
    "get_domain_path 'x5'": ok("GET_DOMAIN_PATH", "/local/domain/0"),
    "get_domain_path '4294967297'": ok("GET_DOMAIN_PATH", "/local/domain/1"),
    "get_domain_path '99999999999999999999'": ok("GET_DOMAIN_PATH", "/local/domain/4294967295"),
    # strtol(p, &end, 0): whitespace and sign taken, 0 is octal, no 0o/0b/0u/_
    "set_perms 'r 1'": ok("SET_PERMS"), "get_perms after 'r 1'": ok("GET_PERMS", "n0\0r1"),
    "get_perms after 'r-1'": ok("GET_PERMS", "n0\0r4294967295"),
    "get_perms after 'r010'": ok("GET_PERMS", "n0\0r8"),
    "get_perms after 'r4294967297'": ok("GET_PERMS", "n0\0r1"),
    "set_perms 'r0b11'": error("EINVAL"), "get_perms after 'r0b11'": None,
    "set_perms 'r0o17'": error("EINVAL"), "get_perms after 'r0o17'": None,
    "set_perms 'r0u5'": error("EINVAL"), "get_perms after 'r0u5'": None,
    "set_perms 'r1_0'": error("EINVAL"), "get_perms after 'r1_0'": None,
    # introduce_domain() of a known domain binds its channel again
    "introduce 0 again": ok("INTRODUCE"),
    # onearg() then atoi
    "is_domain_introduced ' 0'": ok("IS_DOMAIN_INTRODUCED", "T"),
    "is_domain_introduced two strings": error("EINVAL"),
    "is_domain_introduced unterminated": error("EINVAL"),
    # get_strings() counts NUL-terminated strings only: the watch is set
    "watch trailing bytes": ok("WATCH"), "watch": error("EEXIST"),
    "unwatch trailing bytes": ok("UNWATCH"), "unwatch": error("ENOENT"),
    # set_perms_special() knows no such name
    "set_perms @bogus": error("EINVAL"),
    # dom0 has no quota; a record, not a value, is what a guest is refused
    "write 2049 bytes": ok("WRITE"), "write 2049 bytes new deep node": ok("WRITE"),
    "directory of implicit parent": ok("DIRECTORY", "big"),
}


def test_simulated_oxenstored_answers_as_real_oxenstored(xenstored):
    real = real_answers()
    got = probe.run(xenstored.path)
    assert set(got) == set(real)
    assert {k: v for k, v in got.items() if v != real[k]} == {}


def test_c_flavour_answers_as_c_xenstored(xenstored_c):
    want = real_answers()
    for key, answer in C_DIFFERS.items():
        if answer is None:
            want.pop(key, None)
        else:
            want[key] = answer
    got = probe.run(xenstored_c.path)
    assert set(got) == set(want)
    assert {k: v for k, v in got.items() if v != want[k]} == {}
