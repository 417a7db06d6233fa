"""Run one zone's controller: ``python -m crosszone.control --zone Z [--config F] [--run-dir D]``.

``--settings`` takes a JSON file with the ``control`` section, for topologies that do not carry
one yet. Stops on SIGTERM/SIGINT, resigning the leader lease so another zone takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from crosszone.config.load import load_topology, localize
from crosszone.control.controller import create_controller
from crosszone.control.settings import ControlSettings, check_control, control_settings
from crosszone.errors import CrosszoneError


async def _run(args: argparse.Namespace, settings_text: str | None) -> None:
    topology = localize(load_topology(args.config))[0]
    settings = (ControlSettings.model_validate(json.loads(settings_text))
                if settings_text else control_settings(topology))
    problems = check_control(settings)
    if problems:
        raise CrosszoneError("control settings: " + "; ".join(map(str, problems)))
    controller = create_controller(topology, args.zone, run_dir=Path(args.run_dir),
                                   settings=settings, backend=args.backend)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await controller.run(stop)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m crosszone.control", description=__doc__)
    p.add_argument("--zone", required=True)
    p.add_argument("--config", help="topology file (default: the built-in local topology)")
    p.add_argument("--run-dir", default=".crosszone")
    p.add_argument("--settings", help="JSON file with the control section")
    p.add_argument("--backend", choices=["raft", "etcd"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        text = Path(args.settings).read_text() if args.settings else None
        asyncio.run(_run(args, text))
    except (CrosszoneError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
