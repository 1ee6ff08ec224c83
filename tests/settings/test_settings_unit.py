"""The pieces behind fail-closed settings: checks, the provider list, metric roles."""

from __future__ import annotations

import sys

import pytest
from prometheus_client.metrics import MetricWrapperBase

import imagemesh.metrics as metrics
from gen_worker.providers import ADAPTERS
from imagemesh.config import PROVIDERS, address, parse_mapping


def test_the_known_providers_are_the_workers_adapters_and_local():
    assert set(PROVIDERS) == {"local", *ADAPTERS}


def test_every_metric_belongs_to_a_process_role():
    defined = {m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    in_roles = {m for role in metrics.ROLES.values() for m in role}
    assert defined - in_roles == set(), "a metric no process exports"


@pytest.mark.parametrize("value", ["127.0.0.1:50051", "0.0.0.0:0", "[::]:50051", "[::1]:8080",
                                   "gateway.imagemesh.svc.cluster.local:50051", ":50051"])
def test_addresses_that_parse(value):
    assert address(value) == value


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", "host:port", "host:70000", "[::1:50051",
                                   "::1:50051", "bad host:1", "[zz]:1"])
def test_addresses_that_do_not(value):
    with pytest.raises(ValueError):
        address(value)


def test_mapping_errors_name_the_item():
    with pytest.raises(ValueError, match=r"'eight' is not a whole number \(in 'replicate=eight'\)"):
        parse_mapping("fal=2, replicate=eight", value_type=int)


def test_the_event_loop_setting_picks_uvloop_when_installed_and_refuses_it_when_not(monkeypatch):
    import asyncio

    import uvloop

    from imagemesh.config import SettingError
    from imagemesh.process import loop_factory

    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: the import fails
    assert loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(SettingError, match="IMAGEMESH_EVENT_LOOP.*uvloop is not installed"):
        loop_factory("uvloop")
