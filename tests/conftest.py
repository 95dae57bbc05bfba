import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI: bounded examples, no deadline (CPU timing varies), derandomized for reproducible runs.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
# Occasional deep runs (HYPOTHESIS_PROFILE=thorough): many random examples, not derandomized.
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests use small tensors: one thread avoids OpenMP spin-waits, which on a busy 2-core
# machine make tiny ops ~100x slower.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
