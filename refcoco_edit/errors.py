"""Exceptions that decide how a failure is reported.

* ``InputError``: the input as a whole is unusable (a pickle holding code, an image path that
  escapes the images folder, a missing data root). The CLI stops with exit code 2 and one line.
* ``ReasonError``: the base of every error that carries a reason code (``refcoco_edit.reasons``):
  ``SampleError`` (one sample cannot be made; the shard boundary quarantines it and goes on), and
  the errors of the layers below it that keep their own Python base for their callers:
  ``refcoco_edit.rle.MaskError`` (a ``ValueError``) and ``refcoco_edit.pipelines.base.PipelineError``
  (a ``RuntimeError``). The code is checked against the table when the error is made, so a typo
  in a code fails at once instead of reaching a user's filter.
* ``RunError``: a service the run depends on failed (exit code 1).
"""
from __future__ import annotations


class InputError(Exception):
    """Unusable input: stop the run with exit code 2 and this message."""


class UnsafePickleError(InputError):
    """A refs pickle holds something other than plain data; it was not executed."""


class ReasonError(Exception):
    """An error with a stable reason code from ``refcoco_edit.reasons.REASONS``."""

    def __init__(self, reason: str, message: str):
        from .reasons import check_reason

        super().__init__(message)
        self.reason = check_reason(reason)


class SampleError(ReasonError):
    """One sample failed; it is quarantined with ``reason`` and the run goes on."""


class RunError(Exception):
    """A service the run depends on failed (an LLM server down, answering 5xx after retries).

    The CLI stops with exit code 1 and this one-line message; finished shards and cache entries
    are kept, so the same command resumes once the service is back.
    """


# errno values that mean "the storage cannot take this write" (not a bug of the input or of the
# code): the run stops with exit code 1 and one line, and the same command resumes once fixed
_DISK_ERRNOS = {
    "ENOSPC": "no space left on device (the disk is full)",
    "EDQUOT": "disk quota exceeded",
    "EROFS": "the file system is read-only",
    "EIO": "input/output error (a failing disk or network file system)",
}


def disk_errnos() -> frozenset:
    import errno

    return frozenset(getattr(errno, n) for n in _DISK_ERRNOS if hasattr(errno, n))


def is_disk_error(e: BaseException) -> bool:
    """True for an ``OSError`` saying the storage refused a write (full, over quota, read-only, I/O)."""
    return isinstance(e, OSError) and e.errno in disk_errnos()


def with_path(e: OSError, path: object) -> OSError:
    """``e`` with ``filename`` set to ``path`` when it has none (``f.write`` errors carry no path)."""
    if e.filename is None and e.errno is not None:
        out = OSError(e.errno, e.strerror or str(e), str(path))  # the errno picks the subclass
        out.__cause__ = e
        return out
    return e


RERUN = "re-run the same command: finished work is kept and it resumes where it stopped"


def disk_error_message(e: OSError, rerun: str = RERUN) -> str:
    """One line for a disk error: what happened, where, and that re-running resumes."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(e.errno or 0, "")
    what = _DISK_ERRNOS.get(name, e.strerror or str(e))
    where = f" writing {e.filename}" if e.filename else ""
    fix = {"EROFS": "make it writable"}.get(name, "free some space")
    return f"{what}{where}; {fix} and {rerun}"
