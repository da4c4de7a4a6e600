"""The live terminal dashboard: the paper's three monitoring levels, refreshed every second."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

__all__ = ["Dashboard"]


def _f(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


class Dashboard:
    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self._live: Live | None = None

    def __enter__(self) -> Dashboard:
        if self.enabled:
            self._live = Live(console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            if not self.console.is_terminal:  # a file gets the last frame without its line end
                self.console.line()

    def update(self, s: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(self.render(s))

    @staticmethod
    def render(s: dict[str, Any]) -> Group:
        model = Table(title="model", title_justify="left", show_header=False)
        model.add_row("progressive click AUC", _f(s.get("auc")))
        model.add_row("logloss", _f(s.get("logloss")))
        model.add_row("calibration (mean pred / mean label)", _f(s.get("calibration")))
        model.add_row("purchase AUC", _f(s.get("purchase_auc")))

        system = Table(title="system", title_justify="left", show_header=False)
        system.add_row("event time (simulated)", f"{s['event_time'] / 3600:,.2f} h")
        system.add_row("events in / s", _f(s.get("events_per_s"), ",.0f"))
        system.add_row("examples trained (/ s)", f"{s['examples_trained']:,} ({_f(s.get('examples_per_s'), ',.0f')})")
        system.add_row("joiner lag (records)", _f(s.get("joiner_lag"), ","))
        for name in ("item_id", "user_id"):
            t = s["tables"].get(name) or {}
            system.add_row(f"{name}: rows / admitted / filtered / expired",
                           f"{t.get('rows', 0):,} / {t.get('admitted', 0):,} / {t.get('filtered', 0):,} / "
                           f"{t.get('expired', 0):,}")  # fmt: skip
        for arm in ("A", "B"):
            system.add_row(f"arm {arm}: sync version / freshness p50, p99",
                           f"v{_f(s.get(f'{arm}_version'), '.0f')} / {_f(s.get(f'{arm}_freshness_p50_s'), '.2f')} s, "
                           f"{_f(s.get(f'{arm}_freshness_p99_s'), '.2f')} s")  # fmt: skip
        system.add_row("serving QPS / p50 / p99 (client)",
                       f"{_f(s.get('qps'), '.0f')} / {_f(s.get('latency_p50_ms'), '.1f')} ms / "
                       f"{_f(s.get('latency_p99_ms'), '.1f')} ms")  # fmt: skip
        system.add_row("errors (requests / events / server)",
                       f"{s['request_errors']} / {s['event_post_errors']} / {s['server_errors']:.0f}")  # fmt: skip

        business = Table(title="business", title_justify="left")
        for col in ("arm", "impressions", "clicks", "CTR", "purchases", "conversion"):
            business.add_column(col, justify="right")
        for arm in ("A", "B"):
            business.add_row(arm, _f(s.get(f"{arm}_impressions"), ",.0f"), _f(s.get(f"{arm}_clicks"), ",.0f"),
                             _f(s.get(f"{arm}_ctr"), ".4f"), _f(s.get(f"{arm}_purchases"), ",.0f"),
                             _f(s.get(f"{arm}_conversion"), ".5f"))  # fmt: skip
        return Group(model, system, business)
