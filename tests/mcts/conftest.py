"""Search tests share one real sandbox (worker processes are started once per session)."""
import pytest


@pytest.fixture(scope="session")
def sandbox():
    from rstar_jax.sandbox import Sandbox

    with Sandbox(workers=2, timeout_s=5.0, memory_mb=512) as sb:
        yield sb
