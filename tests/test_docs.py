"""The docs stay true: the configuration reference is what the code generates, and every
document the README links to exists."""

from __future__ import annotations

import re

from freshrec._docgen import render

from .conftest import ROOT


def test_configuration_reference_is_current():
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == render(), "docs/configuration.md is stale: run `python -m freshrec._docgen`"


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|src)/[^)#]+)\)", readme):
        assert (ROOT / target).exists(), target
