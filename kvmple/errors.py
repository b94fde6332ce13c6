"""The one exception family of kvmple.

Every error a user can cause or meet carries a one-line message, a hint saying what to do,
and an exit code that tells scripts which kind of failure it was. ``cli.main`` catches
``KvmpleError`` once and prints ``kvmple: error: <message>`` and ``hint: <hint>``; the
traceback is shown only with ``--debug``.

This module is a leaf: it imports nothing of kvmple, so every other module may use it.
"""

from __future__ import annotations


class KvmpleError(Exception):
    """Base of all expected failures."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(KvmpleError):
    """Bad command-line arguments that argparse could not catch."""

    exit_code = 2


class ConfigError(KvmpleError):
    """A YAML file (playbook, recipe, series, nightly config) is invalid: name file:line:key."""

    exit_code = 3


class InputError(KvmpleError):
    """An input file is not what it was given as (a log in no format kvmple recognises):
    says what was looked for and what the file looks like."""

    exit_code = 3


class HostError(KvmpleError):
    """The host cannot do what was asked (not root, no QEMU, libvirt down, no PLE, VMs running)."""

    exit_code = 4


class CommandError(KvmpleError):
    """A local or remote command failed; the message carries the copy-pasteable command."""

    exit_code = 5


class CommandTimeout(CommandError):
    """A command ran past its timeout and was killed."""

    exit_code = 6


class GuestError(KvmpleError):
    """A guest did not start, never answered, died, or presented a wrong host key."""

    exit_code = 7


class WorkloadError(KvmpleError):
    """A workload failed: broker refused/died, client hung, messages lost, unparsable output."""

    exit_code = 8


class BuildError(KvmpleError):
    """An image or kernel build step failed (the message names the step and the log)."""

    exit_code = 9


class PatchError(KvmpleError):
    """A patch series is unknown or does not apply (the message names patch, file, hunk)."""

    exit_code = 10


class StoreError(KvmpleError):
    """The results store is unreachable, of an unknown schema, or a campaign id is unknown."""

    exit_code = 11


class CampaignError(KvmpleError):
    """A campaign cannot run or resume as asked."""

    exit_code = 12


class BootFallback(KvmpleError):
    """An installed kernel did not come up: the host booted its previous kernel again."""

    exit_code = 13


class Interrupted(KvmpleError):
    """Ctrl-C or SIGTERM: everything was cleaned up, the state saved for --resume."""

    exit_code = 130
