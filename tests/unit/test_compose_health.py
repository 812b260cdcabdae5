"""Every service that keeps running has a healthcheck that asks it whether it works
(issue 13, point 7), not merely whether its process is alive."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.unit.test_compose import COMPOSE, settings_of


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


#: what each long-running service's healthcheck asks (careledger.service_health on
#: metrics_port, the console's own /health, the engines' own probes)
SERVES_HEALTH = {
    "processor",
    "verifier",
    "auditor",
    "alert-forwarder",
    "gateway",
    "witness",
    "replica",
    "cosigner",
}


def test_every_long_running_service_has_a_healthcheck_that_asks_it(
    compose: dict[str, Any],
) -> None:
    """Issue 13 point 7: a healthcheck for every service that keeps running; the app
    services' ask /health of careledger.service_health on the port their settings
    serve it on (or the console's own), so a stuck or storeless service is unhealthy,
    not merely alive."""
    from careledger.probe import main as probe_main

    assert callable(probe_main)
    for name, svc in compose["services"].items():
        if svc.get("restart") != "unless-stopped":
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        if name in SERVES_HEALTH:
            test = check["test"]
            assert test[:4] == ["CMD", "python", "-m", "careledger.probe"], (name, test)
            s = settings_of(svc)
            assert s.metrics_port and s.metrics_host == "0.0.0.0", name
            assert test[-1] == f"http://127.0.0.1:{s.metrics_port}/health", name
            assert "ports" not in svc or all(
                str(s.metrics_port) not in str(p) for p in svc["ports"]
            ), f"{name} publishes its metrics port"
    console = compose["services"]["console"]
    assert console["healthcheck"]["test"][-1] == "https://localhost:8443/health"
    assert "--tls-cert" in console["command"] and "--tls-key" in console["command"]
