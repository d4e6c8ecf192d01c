"""Hypothesis settings of the backend's property tests: they run beside other work (CI machines with
2 cores, a suite in parallel), where generating examples can be slow; that speed is not what they
check, so the ``too_slow`` health check is off (it failed schema tests under load). The contract
suite keeps brownie's own profiles (this folder only)."""

from hypothesis import HealthCheck, settings

settings.register_profile("tegrid-backend", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tegrid-backend")
