"""Nothing may skip from the README's test command but the ``gpu`` tests.

A test that skips because an optional package is missing passes silently, so a dependency that
falls out of the ``dev`` extra hides its tests for good (scipy once did). These hooks turn every
skip of a test not marked ``gpu`` (and of a whole module, at collection) into a failure that says
why. Set ``REFCOCO_EDIT_ALLOW_SKIPS=1`` to run a partial install on purpose.
"""
from __future__ import annotations

import os

import pytest

ENV = "REFCOCO_EDIT_ALLOW_SKIPS"
WHY = ("skipped outside the `gpu` marker ({reason}): the README's test command runs every test but the gpu ones; "
       "install the dev extra (`pip install -e .[dev]`), or set " + ENV + "=1 to allow skips")


def _allowed() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and "gpu" not in item.keywords and not _allowed():
        rep.outcome = "failed"
        rep.longrepr = WHY.format(reason=_reason(rep.longrepr))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.outcome == "skipped" and not _allowed():
        rep.outcome = "failed"
        rep.longrepr = WHY.format(reason=_reason(rep.longrepr))
