"""The serving bench's report: each load run on its own, the worst one as headline."""

from __future__ import annotations

import pytest

from freshrec.bench.serve import _load_figures, run
from freshrec.errors import ConfigError


def test_a_runs_figures_are_its_own_quantiles_rate_and_errors():
    load = {"latency_s": [0.001] * 98 + [0.05, 0.2], "status": [200] * 99 + [503], "elapsed_s": 2.0}
    f = _load_figures(load)
    assert f["rank_p50_ms"] == pytest.approx(1.0) and f["rank_max_ms"] == pytest.approx(200.0)
    assert 1.0 < f["rank_p99_ms"] <= 200.0 and f["rank_qps"] == pytest.approx(49.5)
    assert f["error_rate"] == pytest.approx(0.01) and f["requests"] == 100


def test_no_runs_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="runs must be at least 1"):
        run(quick=True, runs=0)
