import os

import pytest
from hypothesis import HealthCheck, settings

# CI: deterministic examples, no example database, no deadline (each new shape compiles).
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Longer local runs: QJAX_HYPOTHESIS_PROFILE=stress pytest ...
settings.register_profile(
    "stress",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("QJAX_HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch  # noqa: F401
    except ImportError:
        skip = pytest.mark.skip(reason="torch not installed (pip install -e '.[torch]')")
        for item in items:
            if "torch" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: compares against live torch 2.13 quantized kernels")


@pytest.fixture(autouse=True, scope="module")
def _torch_global_state_restored():
    """A test module that changes torch's thread count or quantized engine leaves them as it found them:
    torch's kernels pick their paths (vector/scalar splits, summation orders) from the thread count, and other
    modules read it once (pytest-xdist interleaves modules on one worker)."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    yield
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine
