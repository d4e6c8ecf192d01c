"""The demo's service processes: a real ``tegrid`` subcommand, its log, its exit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from backend.devtools.services import ServiceError, ServiceProcess
from backend.net import free_port
from backend.settings import Settings


def test_service_process_reports_an_early_exit_with_its_log(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        Settings(),
        rpc_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        deployment_file=tmp_path / "missing-deployment.json",
    )
    service = ServiceProcess("keeper", ["keeper", "--once"], settings, tmp_path).start()
    try:
        with pytest.raises(ServiceError, match="keeper exited"):
            service.wait_until(lambda: False, timeout_s=120)
        assert not service.alive()
        assert "missing-deployment.json" in service.log_tail()
    finally:
        service.stop()


def test_service_process_runs_the_tegrid_subcommand_into_its_log(tmp_path: Path) -> None:
    service = ServiceProcess("meters", ["meters", "--help"], Settings(), tmp_path).start()
    assert service.process is not None
    assert service.process.wait(timeout=120) == 0
    service.stop()  # already gone: nothing to do
    assert service.process is None
    assert "simulate" in (tmp_path / "meters.log").read_text()
