"""``python -m xensim``: serve a simulated Xen host, list shipped scenarios.

``serve`` starts the host in the foreground, prints ``host.paths`` as one
JSON line on stdout (flushed: a parent process reads it to learn the socket
paths), and runs until SIGTERM or SIGINT, then stops every component
(unmounting the sysfs, removing the sockets) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from . import scenario as scenario_mod
from .host import SimHost


def _serve(args: argparse.Namespace) -> int:
    try:
        sc = scenario_mod.load(args.scenario)
    except scenario_mod.ScenarioError as exc:
        print(f"xensim: {exc}", file=sys.stderr)
        return 2
    host = SimHost(sc, args.state_dir, timing_scale=args.timing_scale, mount_sysfs=not args.no_sysfs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, host.request_stop)

        def ready() -> None:
            for warning in host.warnings:
                logging.getLogger("xensim").warning("%s", warning)
            sys.stdout.write(json.dumps(host.paths, sort_keys=True) + "\n")
            sys.stdout.flush()
        await host.serve(ready=ready)

    try:
        asyncio.run(main())
    except Exception as exc:        # a start failure: say why, exit non-zero
        logging.getLogger("xensim").exception("xensim serve failed")
        print(f"xensim: {exc}", file=sys.stderr)
        return 1
    return 0


def _scenarios(_args: argparse.Namespace) -> int:
    for path in scenario_mod.shipped():
        try:
            sc = scenario_mod.load(path)
            desc = " ".join(sc.description.split())
        except scenario_mod.ScenarioError as exc:
            desc = f"(invalid: {exc})"
        print(f"{path.stem}\t{desc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xensim", description="A simulated Xen host for tests.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a simulated host until SIGTERM/SIGINT")
    serve.add_argument("--scenario", required=True, help="scenario file, or the name of a shipped one")
    serve.add_argument("--state-dir", required=True, help="directory for sockets, sysfs mount, userdata")
    serve.add_argument("--timing-scale", type=float, default=None,
                       help="scale of the simulated kernel delays (default: the scenario's, 0.1)")
    serve.add_argument("--no-sysfs", action="store_true", help="do not mount the FUSE sysfs")
    serve.set_defaults(func=_serve)
    lst = sub.add_parser("scenarios", help="list the shipped scenarios")
    lst.set_defaults(func=_scenarios)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)
