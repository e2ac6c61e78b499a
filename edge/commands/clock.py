"""``edge clock show`` / ``edge clock reset``: the device's time high-water mark.

The mark (:mod:`edge.watchlist.timeguard`) keeps the device from arming or taking a
command on a clock set back. A mark that is itself wrong (a clock set ahead while the
unit was off, a bad NTP answer that a later one confirmed) would refuse the right time
until real time caught up; the technician sets the clock right and runs, with the
daemon stopped::

    systemctl stop edge && /opt/edge/venv/bin/edge clock reset && systemctl start edge

``reset`` sets the mark to the clock now (saying whether it is synchronised) and drops
an unconfirmed forward jump; the daemon audits it (``clock_mark_reset``, the old and new
mark) at its next start. It refuses while a daemon holds the state directory; run as
root, it leaves the files owned by the state directory's owner (the daemon's user).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from edge.commands import add_config_option


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("clock", help="show or reset the device's time high-water mark")
    sub = p.add_subparsers(dest="clock_command", metavar="ACTION")
    sub.required = True
    show = sub.add_parser("show", help="the mark, an unconfirmed clock jump, the clock now")
    add_config_option(show)
    show.set_defaults(func=run_show)
    reset = sub.add_parser(
        "reset",
        help="set the mark to the clock now (the daemon stopped; audited at its next start)",
        description="Set the time high-water mark to the current clock and drop an "
        "unconfirmed forward jump. Set the clock right first (NTP, or timedatectl "
        "set-time). Refuses while the daemon runs.",
    )
    add_config_option(reset)
    reset.set_defaults(func=run_reset)


def _guard(args: argparse.Namespace) -> Any:
    from edge.service.config import config_path, load_settings
    from edge.watchlist.timeguard import TimeGuard

    settings = load_settings(config_path(args.config))
    return settings.device.state_dir, TimeGuard(settings.device.state_dir)


def _synced() -> str:
    from edge.watchlist.timeguard import clock_synchronised

    return "synchronised" if clock_synchronised() else "NOT synchronised"


def _same_owner(state_dir: Path, files: tuple[Path, ...]) -> None:
    """Run as root, give the files the state directory's owner: a clock record the
    daemon's user cannot read would stop it at start."""
    if os.geteuid() != 0:
        return
    st = state_dir.stat()
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, st.st_uid, st.st_gid)


def run_show(args: argparse.Namespace) -> int:
    from edge.watchlist.timeguard import iso

    _, guard = _guard(args)
    now = time.time()
    print(f"clock      {iso(now)} ({_synced()})")
    mark = iso(guard.hwm) if guard.hwm else "none"
    behind = "; the clock is behind it: no arming, commands or purges" if guard.behind(now) else ""
    print(f"mark       {mark}{behind}")
    note = guard.jump_note()
    print(f"jump       {note or 'none pending'}")
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from edge.watchlist.timeguard import LOCK_FILE, iso, lock_state, unlock_state

    state_dir, guard = _guard(args)
    fd = lock_state(state_dir)
    try:
        now = time.time()
        old = guard.reset(now)
        _same_owner(state_dir, (guard.path, state_dir / LOCK_FILE))
    finally:
        unlock_state(fd)
    print(f"mark reset from {iso(old)} to {iso(now)} (clock {_synced()}); "
          "the daemon audits it at its next start")  # fmt: skip
    return 0
