"""Fixtures for the per-layer quantization algorithms: small layers with realistic calibration inputs."""

from __future__ import annotations

import pytest
import torch


def realistic_layer(n: int, k: int, tokens: int = 1024, seed: int = 0, outliers: int = 3):
    """(W (n, k) float32, H = X^T X / tokens float64, X (tokens, k)): correlated Gaussian inputs with a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(tokens, k, generator=g) @ mix + 0.5 * torch.randn(tokens, k, generator=g)
    x[:, torch.randperm(k, generator=g)[:outliers]] *= 20.0
    w = torch.randn(n, k, generator=g) * 0.02
    h = x.T.double() @ x.double() / tokens
    return w, h, x


@pytest.fixture(scope="session")
def layer_256():
    return realistic_layer(256, 256)


@pytest.fixture(scope="session")
def make_layer():
    return realistic_layer


@pytest.fixture
def one_thread():
    """Tiny models: torch's thread pool only spins, which costs seconds on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
