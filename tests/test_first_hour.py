"""Defaults a new user meets first: deploy() on a CPU model, pretrained=True without a network."""
import socket

import pytest
import timm
import torch

import lowspace
from lowspace.arch.checkpoint import CheckpointError
from lowspace.arch.presets import get_preset


def test_deploy_on_cpu_picks_a_backend_that_exists_there():
    cfg = get_preset("b0").replace(resolution=32)
    model = lowspace.create_model(cfg, num_classes=4).eval()
    fast = lowspace.deploy(model, resolution=32, batch_size=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_pretrained_without_network_fails_in_seconds(monkeypatch):
    def unreachable(address, timeout=None):
        raise OSError("network is unreachable")

    def hub_client(*args, **kwargs):  # the hub client would retry for about 45 s before giving up
        raise AssertionError("the hub was contacted although its host is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(timm, "create_model", hub_client)
    with pytest.raises(CheckpointError, match="cannot reach .* pretrained=PATH"):
        lowspace.create_model("b0", pretrained=True)


def test_search_val_per_class_flag_sets_the_held_out_size():
    import argparse

    from lowspace.cli import search as search_cli

    parser = argparse.ArgumentParser()
    search_cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["search", "--val-per-class", "250"])
    assert search_cli.config_from_args(args).proxy["val_per_class"] == 250
