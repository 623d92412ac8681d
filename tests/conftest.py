import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's top-level modules


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (real checkpoints, minutes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on a CPU; run with --slow (README)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow: run with --slow"))
