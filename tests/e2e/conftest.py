"""pytest fixtures for the end-to-end tests (e2e_support.py has the machinery):

  start_server  factory: start_server(config=None, name=None, extra_args=(), wait=True)
  server        one running server with the default small config

Every server still running at teardown gets SIGTERM and must exit 0 within 15 s (else it is
killed and the test fails). A failing test's report carries each of its servers' stderr.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import ServerFactory, make_config  # noqa: E402


def _stderr_sections(item):
    factory = getattr(item, "_hvlm_factory", None)
    if factory is None:
        return []
    return [(f"hvlm-server '{s.name}' stderr", s.stderr_text()) for s in factory.servers]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, text in _stderr_sections(item):
            report.sections.append((title, text[-20000:]))


@pytest.fixture
def start_server(tmp_path, request):
    """start_server(config=None, name=None, extra_args=(), wait=True) -> ServerProcess: starts
    hvlm-server with `config` (a dict written as YAML, or YAML text; default make_config())
    and, with `wait`, waits for its ready file. The ServerProcess unpacks as
    (address, process, config_path)."""
    factory = ServerFactory(tmp_path)
    request.node._hvlm_factory = factory
    yield factory
    problems = factory.teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)  # stderr: attached by the hook


@pytest.fixture
def server(start_server):
    """A running server hosting the `small` stack (e2e_support.SMALL_SPEC, seed 7)."""
    return start_server(make_config(), name="small")
