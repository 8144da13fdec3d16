"""What a benchmark result records about the software it ran on."""

from __future__ import annotations

import importlib.metadata


def installed_versions(*packages: str) -> dict[str, str | None]:
    """``{package: version}`` of installed distributions, None for one that is not installed
    (PyTorch is an optional baseline). Read from the package metadata: nothing is imported."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
