"""Signed commands and adjudications from the control room (safeguards 6, 7, 8, 15).

Part of :mod:`edge.watchlist.deployment`. Owns the messages the control room signs:

- :meth:`~CommandHandler.handle_command` takes signed ``end_deployment`` and
  ``legal_hold`` commands (:mod:`edge.watchlist.signed_commands`), never on a clock
  behind the time high-water mark; :meth:`~CommandHandler.process_command_files`
  takes the same commands as files dropped in ``<state_dir>/commands/`` (Ansible's
  end-deployment play), each removed once handled.
- Adjudications (:meth:`~CommandHandler.handle_adjudication`) must be signed by a
  trusted control-room key (:mod:`edge.watchlist.adjudication`), name an alert this
  deployment issued (:meth:`~CommandHandler.note_alert`), and are recorded once per
  alert id and decision; nothing acts on them.

Every refusal is audited with its reason, never with the payload. :class:`CommandHandler`
works on the manager's :class:`~edge.watchlist.deployment_state.DeploymentState` and is
handed what else it needs: the configuration, the command verifier (replay protection),
the time guard, the adjudication ledger, the audit log, the clock and the outbox's legal
hold. The ending a command asks for is the
:class:`~edge.watchlist.deployment_end.DeploymentEnder`'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.watchlist.adjudication import (
    Adjudication,
    AdjudicationLedger,
    AdjudicationRefused,
    verify_adjudication,
)
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import format_time
from edge.watchlist.deployment_end import DeploymentEnder
from edge.watchlist.deployment_state import DeploymentState
from edge.watchlist.deployment_status import DeploymentConfig
from edge.watchlist.signed_commands import CommandRefused, CommandVerifier, SignedCommand
from edge.watchlist.timeguard import TOLERANCE_S, TimeGuard

log = logging.getLogger("edge.watchlist.deployment")

MAX_COMMAND_FILE = 64 * 1024
COMMANDS_DIR = "commands"
"""``<state_dir>/commands/``: where signed command files are dropped for the daemon."""

LegalHold = Callable[[str, bool], object]
"""Sets or clears an alert's legal hold in the outbox; returns False if it has no such alert."""


class CommandHandler:
    """Signed commands and adjudications (see the module docstring)."""

    def __init__(
        self,
        state: DeploymentState,
        ender: DeploymentEnder,
        config: DeploymentConfig,
        verifier: CommandVerifier,
        time: TimeGuard,
        ledger: AdjudicationLedger,
        audit: AuditLog,
        clock: Callable[[], float],
        set_legal_hold: LegalHold | None = None,
    ) -> None:
        self._state = state
        self._ender = ender
        self._config = config
        self._verifier = verifier
        self._time = time
        self._ledger = ledger
        self._audit = audit
        self._clock = clock
        self._set_legal_hold = set_legal_hold

    # --- commands -----------------------------------------------------------------------

    def handle_command(self, data: bytes, now: float | None = None) -> dict[str, Any]:
        """Verify a signed command and act on it. Raises :class:`CommandRefused`.

        Returns ``{"command": ..., ...}``: for ``end_deployment`` the summary, for
        ``legal_hold`` the alert ids and the flag.
        """
        now = self._clock() if now is None else now
        try:
            if self._time.behind(now):
                raise CommandRefused("clock_behind", self._time.behind_message(now))
            cmd = self._verifier.verify(data, now, self._time.hwm - TOLERANCE_S)
            self._time.observe(now, persist=True)
        except CommandRefused as exc:
            log.warning("command refused: %s", exc)
            self._audit.append("command_refused", reason=exc.reason, message=str(exc))
            raise
        if cmd.command == "end_deployment":
            return {"command": cmd.command, "summary": self._end(cmd, now)}
        return {"command": cmd.command, **self._legal_hold(cmd)}

    def process_command_files(self, directory: Path, now: float | None = None) -> list[str]:
        """Handle signed command files dropped in ``directory`` (``*.json``, e.g. by
        Ansible's end-deployment play before ``systemctl reload edge``); each file is
        removed once handled, accepted or refused. Returns one line per file."""
        results: list[str] = []
        try:
            files = sorted(p for p in directory.glob("*.json") if p.is_file())
        except OSError:
            return results
        for path in files[:100]:
            try:
                with path.open("rb") as fh:
                    data = fh.read(MAX_COMMAND_FILE + 1)
                result = self.handle_command(data, now)
                results.append(f"{path.name}: {result['command']} accepted")
            except (CommandRefused, OSError) as exc:
                results.append(f"{path.name}: refused: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
        return results

    def end(self, signed_command: bytes, now: float | None = None) -> dict[str, Any]:
        """End the deployment on a signed ``end_deployment`` command; returns the summary."""
        result = self.handle_command(signed_command, now)
        if result["command"] != "end_deployment":
            raise CommandRefused("wrong_command", "not an end_deployment command")
        summary: dict[str, Any] = result["summary"]
        return summary

    def _end(self, cmd: SignedCommand, now: float) -> dict[str, Any]:
        with self._state.lock:
            active = self._state.active
            if active is None and self._state.pending is not None:
                cancelled = self._ender.cancel_pending(cmd, now)
                if cancelled is not None:
                    return cancelled
            if active is None or active.opened.header.deployment_id != cmd.deployment_id:
                current = active.opened.header.deployment_id if active else "none"
                exc = CommandRefused(
                    "not_current",
                    f"end_deployment for {cmd.deployment_id}, but the current deployment is "
                    f"{current}",
                )
                self._audit.append("command_refused", reason=exc.reason, message=str(exc))
                raise exc
            self._audit.append(
                "command_accepted", command=cmd.command, deployment_id=cmd.deployment_id,
                nonce=cmd.nonce, issued_at=format_time(cmd.issued_at),
            )
            return self._ender.finish("end_command", now)

    def _legal_hold(self, cmd: SignedCommand) -> dict[str, Any]:
        ids: list[str] = list(cmd.args["alert_ids"])
        on: bool = cmd.args["on"]
        if self._set_legal_hold is None:
            exc = CommandRefused("unsupported", "legal hold is not available (no outbox)")
            self._audit.append("command_refused", reason=exc.reason, message=str(exc))
            raise exc
        missing = [a for a in ids if self._set_legal_hold(a, on) is False]
        self._audit.append(
            "legal_hold", alert_ids=ids, on=on, not_found=missing,
            deployment_id=cmd.deployment_id, nonce=cmd.nonce,
        )
        return {"alert_ids": ids, "on": on, "not_found": missing}

    # --- adjudications ------------------------------------------------------------------

    def note_alert(self, alert_id: str) -> None:
        """An alert this deployment issued: the only kind that may be adjudicated."""
        with self._state.lock:
            if self._state.active is not None:
                self._ledger.issue(alert_id)

    def handle_adjudication(self, data: bytes, now: float | None = None) -> Adjudication:
        """Verify, check and record a signed adjudication (safeguard 8). Nothing acts on it.

        Raises :class:`AdjudicationRefused`; each refusal is audited (reason only).
        """
        now = self._clock() if now is None else now
        adj: Adjudication | None = None
        try:
            adj = self._verify_adjudication(data, now)
            with self._state.lock:
                active = self._state.active
                if active is None:
                    raise AdjudicationRefused("not_armed", "no deployment is armed")
                self._ledger.check(adj)
                self._ledger.record(adj)
                self._audit.append(
                    "adjudication", alert_id=adj.alert_id, decision=adj.decision,
                    officer=adj.officer, decided_at=adj.at_text, signer=adj.signer,
                    deployment_id=active.opened.header.deployment_id,
                )
        except AdjudicationRefused as exc:
            # A verified adjudication that is refused here (not armed, not this
            # deployment's alert, a decision already recorded) names what it refused, so the
            # control room shows the van's answer beside the officer's decision.
            named = {} if adj is None else {"alert_id": adj.alert_id, "decision": adj.decision,
                                            "decided_at": adj.at_text}  # fmt: skip
            self._audit.append("adjudication_refused", reason=exc.reason, size=len(data),
                               **named)  # fmt: skip
            raise
        return adj

    def _verify_adjudication(self, data: bytes, now: float) -> Adjudication:
        refusal = AdjudicationRefused("unknown_signer", "no trusted signing key")
        for signer in self._config.trusted_signers:
            try:
                return verify_adjudication(data, signer, device_id=self._config.device_id, now=now)
            except AdjudicationRefused as exc:
                refusal = exc
                if exc.reason != "unknown_signer":
                    break
        raise refusal
