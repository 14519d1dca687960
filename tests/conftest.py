"""Shared pytest configuration: hypothesis profiles, one BLAS thread, the ``one_thread`` fixture.

``HYPOTHESIS_PROFILE=ci`` (default): ~25 derandomized examples per property, no deadline
(cvxpy solves vary in time).  ``HYPOTHESIS_PROFILE=long``: many more, random seeds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# the tests import the package and the shared strategies from the checkout
_ROOT = Path(__file__).resolve().parent.parent
for p in (str(_ROOT), str(_ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny problems: one BLAS thread.  With two OpenMP threads on a busy 2-core machine an
# 18×18 matmul was measured at 3 ms instead of 4 µs (spin-wait contention).
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("FISTAOPT_TEST_THREADS", "1")))


@pytest.fixture
def one_thread():
    """One thread for the test's own prunes, as the spawned ranks use (other thread counts
    round differently); the previous count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
