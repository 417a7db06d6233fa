"""Tests that need a Debian package: skipped on a developer's machine without it, failed in CI.

CI runs ``.ci/run`` as root, which installs every package the tests use (postgresql, etcd-server,
nftables, prometheus, chromium) -- so as root a missing one is a broken set-up to report, not a
gap to hide behind a skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IS_ROOT = os.geteuid() == 0


def missing(what: str) -> NoReturn:
    """Skip (not root: a developer's machine) or fail (root: CI, where .ci/run installs it)."""
    if IS_ROOT:
        pytest.fail(f"{what} -- running as root, as CI does, where .ci/run installs it")
    pytest.skip(what)


def mark_missing(absent: bool, what: str) -> pytest.MarkDecorator:
    """A module/test mark: skip when ``absent`` off-root; as root the test runs and fails."""
    return pytest.mark.skipif(absent and not IS_ROOT, reason=what)
