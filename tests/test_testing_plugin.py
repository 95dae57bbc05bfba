"""The pytest plugin flowsolve.testing.pytest, run on a throwaway test suite with pytester."""

pytest_plugins = ["pytester"]

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

import flowsolve.testing.pytest as plugin  # noqa: E402

SUITE = '''
import torch
from hypothesis import given, settings, strategies as st
from flowsolve.testing import CheckResult

def test_generator_is_seeded(fs_generator):
    expected = torch.randn(3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.randn(3, generator=fs_generator), expected)

def test_options_took_effect():
    assert settings.get_current_profile_name() == "flowsolve-ci" and settings().max_examples == 25
    assert torch.get_num_threads() == 1

def test_a_passing_check(fs_check):
    result = fs_check(CheckResult("mean_error", 0.01, 0.05, True, "mean error 0.01 <= 0.05"))
    assert result.passed

def test_a_failing_check(fs_check):
    fs_check(CheckResult("solver_order", 1.2, 2.0, False, "observed order 1.2, expected 2 +- 0.3"))

def test_not_a_check(fs_check):
    fs_check(0.5)
'''


@pytest.fixture
def suite(pytester):
    pytester.makeconftest('pytest_plugins = ["flowsolve.testing.pytest"]')
    pytester.makepyfile(test_suite=SUITE)
    profile, threads = settings.get_current_profile_name(), torch.get_num_threads()
    yield pytester
    assert settings.get_current_profile_name() == profile and torch.get_num_threads() == threads  # put back


def test_fixtures_options_and_summary(suite):
    result = suite.runpytest_inprocess("-v", "--flowsolve-seed=7", "--flowsolve-profile=flowsolve-ci",
                                       "--flowsolve-threads=1")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines([
        "*AssertionError: solver_order: FAIL: observed order 1.2, expected 2 +- 0.3",
        "*TypeError: fs_check takes a flowsolve.testing.CheckResult, got float",
        "*- flowsolve checks: 1 passed, 1 failed -*",
        "PASS mean_error: 0.01 vs tolerance 0.05  (test_suite.py::test_a_passing_check)",
        "FAIL solver_order: 1.2 vs tolerance 2  (test_suite.py::test_a_failing_check)",
    ])


def test_summary_is_quiet_without_verbose_and_shows_only_failures(suite):
    result = suite.runpytest_inprocess("-k", "check and not not_a", "--flowsolve-profile=flowsolve-thorough")
    result.assert_outcomes(passed=1, failed=1)
    assert "FAIL solver_order: 1.2 vs tolerance 2" in result.stdout.str()
    assert "PASS mean_error" not in result.stdout.str()
    quiet = suite.runpytest_inprocess("-k", "passing_check")
    quiet.assert_outcomes(passed=1)
    assert "flowsolve checks" not in quiet.stdout.str()


def test_unknown_profile_is_a_usage_error(suite):
    result = suite.runpytest_inprocess("--flowsolve-profile=flowsolve-fast")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no hypothesis profile named 'flowsolve-fast'*"])


def test_profiles_are_registered_on_import():
    ci, thorough = settings.get_profile("flowsolve-ci"), settings.get_profile("flowsolve-thorough")
    assert (ci.max_examples, ci.derandomize, ci.deadline, ci.print_blob) == (25, True, None, True)
    assert (thorough.max_examples, thorough.derandomize, thorough.deadline) == (500, False, None)
    assert plugin.fs_generator is not None and plugin.fs_check is not None
