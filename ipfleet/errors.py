"""The errors ipfleet reports to its user, in one hierarchy.

Every error a command can end with derives from IpfleetError and carries its exit
code: 1 for a failure to act on (AWS said no, a node failed, a twin could not boot),
2 for input that cannot work (a setting, a stack name, a git reference). The CLI
turns any of them into one red line and that code, in one place (ipfleet/cli.py);
`ipfleet.client()` and scripts get the exception itself.
"""

from __future__ import annotations


class IpfleetError(Exception):
    """A failure to act on; the message says what happened and what to do."""

    exit_code = 1

    def message(self) -> str:
        return str(self)


class UsageError(IpfleetError):
    """Input that cannot work: a setting, a stack name, a reference."""

    exit_code = 2
