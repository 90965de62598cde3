"""Exceptions that decide how a failure is reported.

* ``InputError``: the input as a whole is unusable (a pickle holding code, an image path that
  escapes the images folder, a missing data root). The CLI stops with exit code 2 and one line.
* ``SampleError``: one sample cannot be made; ``reason`` is a quarantine reason code
  (see ``refcoco_edit.schema.REASONS``). The shard boundary records it and goes on.
"""
from __future__ import annotations


class InputError(Exception):
    """Unusable input: stop the run with exit code 2 and this message."""


class UnsafePickleError(InputError):
    """A refs pickle holds something other than plain data; it was not executed."""


class SampleError(Exception):
    """One sample failed; it is quarantined with ``reason`` and the run goes on."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class RunError(Exception):
    """A service the run depends on failed (an LLM server down, answering 5xx after retries).

    The CLI stops with exit code 1 and this one-line message; finished shards and cache entries
    are kept, so the same command resumes once the service is back.
    """
