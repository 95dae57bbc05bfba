"""A pytest plugin for testing flows, fields and samplers with flowsolve.

Load it from your ``conftest.py``::

    pytest_plugins = ["flowsolve.testing.pytest"]

It gives you

* hypothesis profiles ``flowsolve-ci`` (25 examples, derandomized, no deadline, the blob to
  reproduce a failure printed) and ``flowsolve-thorough`` (500 random examples, no deadline),
  loaded with ``--flowsolve-profile NAME`` (any registered profile); without the option the
  plugin loads none, so a profile you load yourself stays;
* the fixture ``fs_generator``: a ``torch.Generator`` seeded with ``--flowsolve-seed`` (default 0);
* the fixture ``fs_check``: call it with a :class:`~flowsolve.testing.CheckResult` to record
  the check and assert that it passed (an ``AssertionError`` with the check's one-line
  explanation otherwise); the recorded checks are listed, one line each, at the end of the
  run with ``-v``, and the failed ones whenever one failed;
* ``--flowsolve-threads N``: ``torch.set_num_threads(N)`` for the run (left alone otherwise).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

from flowsolve.testing._result import CheckResult

settings.register_profile("flowsolve-ci", max_examples=25, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("flowsolve-thorough", max_examples=500, deadline=None, derandomize=False)

_CHECKS = pytest.StashKey[list]()  # (test node id, CheckResult), in the order they ran
_RESTORE = pytest.StashKey[dict]()  # global state to put back at the end of the run


def pytest_addoption(parser):
    group = parser.getgroup("flowsolve")
    group.addoption("--flowsolve-profile", metavar="NAME", default=None,
                    help="load this hypothesis profile (flowsolve-ci, flowsolve-thorough or one you registered)")
    group.addoption("--flowsolve-seed", metavar="SEED", type=int, default=0,
                    help="seed of the fs_generator fixture (default 0)")
    group.addoption("--flowsolve-threads", metavar="N", type=int, default=None,
                    help="call torch.set_num_threads(N) for the run")


def pytest_configure(config):
    config.stash[_CHECKS] = []
    restore = config.stash[_RESTORE] = {}
    profile = config.getoption("flowsolve_profile", None)
    if profile is not None:
        try:
            settings.get_profile(profile)
        except Exception:
            raise pytest.UsageError(f"--flowsolve-profile: no hypothesis profile named {profile!r} (flowsolve-ci, "
                                    "flowsolve-thorough, or one registered with settings.register_profile)") from None
        current = getattr(settings, "get_current_profile_name", None)  # absent in older hypothesis
        if current is not None:
            restore["profile"] = current()
        settings.load_profile(profile)
    threads = config.getoption("flowsolve_threads", None)
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"--flowsolve-threads must be >= 1, got {threads}")
        restore["threads"] = torch.get_num_threads()
        torch.set_num_threads(threads)


def pytest_unconfigure(config):
    # put the global state back, for runs inside a process that goes on (pytester, IDEs)
    restore = config.stash.get(_RESTORE, {})
    if "profile" in restore:
        settings.load_profile(restore["profile"])
    if "threads" in restore:
        torch.set_num_threads(restore["threads"])


@pytest.fixture
def fs_generator(request) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``--flowsolve-seed`` (default 0), fresh for each test."""
    return torch.Generator().manual_seed(request.config.getoption("flowsolve_seed", 0))


@pytest.fixture
def fs_check(request):
    """``fs_check(result)``: record a :class:`~flowsolve.testing.CheckResult` for the run's summary
    and assert it passed (``AssertionError`` with its one-line explanation otherwise); returns it."""
    checks = request.config.stash[_CHECKS]
    nodeid = request.node.nodeid

    def check(result: CheckResult) -> CheckResult:
        __tracebackhide__ = True
        if not isinstance(result, CheckResult):
            raise TypeError(f"fs_check takes a flowsolve.testing.CheckResult, got {type(result).__name__}")
        checks.append((nodeid, result))
        if not result.passed:
            raise AssertionError(str(result))  # "name: FAIL: explanation", raised from the test's own line
        return result

    return check


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    checks = config.stash.get(_CHECKS, [])
    failed = sum(not result.passed for _, result in checks)
    if not checks or not (failed or config.getoption("verbose") > 0):
        return
    shown = checks if config.getoption("verbose") > 0 else [c for c in checks if not c[1].passed]
    terminalreporter.write_sep("-", f"flowsolve checks: {len(checks) - failed} passed, {failed} failed")
    for nodeid, r in shown:
        terminalreporter.write_line(f"{r.verdict.upper()} {r.name}: {_number(r.value)} vs tolerance "
                                    f"{_number(r.tolerance)}  ({nodeid})")


def _number(value) -> str:
    try:
        return f"{value:.4g}"
    except (TypeError, ValueError):
        return repr(value)
