"""What the demo records every second, and the report it writes at the end.

A sample joins the three monitoring levels of the paper: model (the trainer's progressive AUC,
logloss, calibration), system (events and examples per second, joiner lag, table rows with
admitted / filtered / expired, sync versions and freshness, serving QPS and latency) and business
(CTR and conversion per A/B arm). Samples go to ``timeline.jsonl``; the report is ``report.html``
with matplotlib PNGs beside it, and ``metrics.json`` with the final figures and the acceptance
checks evaluated.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from freshrec._io import atomic_write_bytes
from freshrec.demo.client import EventPoster, HttpRecommender, ServerMetrics

__all__ = ["Recorder", "write_report"]

ARMS = ("A", "B")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


class Recorder:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.samples: list[dict[str, Any]] = []
        self._prev: dict[str, Any] | None = None

    def _trainer(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "status.json").read_bytes())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def sample(self, client, rec: HttpRecommender, poster: EventPoster, event_time: float,
               elapsed: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]  # fmt: skip
        st = self._trainer()
        m = ServerMetrics(client.get("/metrics").text)
        rank = (st.get("model") or {}).get("rank", {})
        joiner = st.get("joiner") or {}
        s: dict[str, Any] = {
            "elapsed_s": elapsed,
            "event_time": event_time,
            "auc": rank.get("click/auc"),
            "logloss": rank.get("click/logloss"),
            "calibration": rank.get("click/calibration"),
            "purchase_auc": rank.get("purchase/auc"),
            "examples_trained": st.get("examples_trained", 0),
            "events_in": joiner.get("events_in", 0),
            "joiner_lag": joiner.get("lag_records"),
            "tables": st.get("tables", {}),
            "sync_version": ((st.get("sync") or {}).get("rank") or {}).get("sparse_version"),
            "requests": rec.requests,
            "request_errors": rec.errors,
            "event_post_errors": poster.errors,
            "server_errors": m.total("freshrec_serve_errors_total"),
            "latency_p50_ms": rec.latency_ms(50),
            "latency_p99_ms": rec.latency_ms(99),
            "server_p99_ms": 1000 * m.quantile("freshrec_serve_request_seconds", 0.99, endpoint="/v1/recommend"),
        }
        for arm in ARMS:
            imps = m.total("freshrec_serve_impressions_total", arm=arm)
            clicks = m.total("freshrec_serve_actions_total", arm=arm, type="click")
            buys = m.total("freshrec_serve_actions_total", arm=arm, type="purchase")
            s[f"{arm}_impressions"], s[f"{arm}_clicks"], s[f"{arm}_purchases"] = imps, clicks, buys
            s[f"{arm}_ctr"] = clicks / imps if imps else None
            s[f"{arm}_conversion"] = buys / imps if imps else None
            s[f"{arm}_version"] = m.total("freshrec_sync_version", model=f"{arm}/rank", kind="sparse")
            for q in (50, 99):
                s[f"{arm}_freshness_p{q}_s"] = _num(
                    m.quantile("freshrec_sync_freshness_seconds", q / 100, model=f"{arm}/rank", kind="sparse")
                )
        prev = self._prev
        if prev is not None and elapsed > prev["elapsed_s"]:
            dt = elapsed - prev["elapsed_s"]
            s["events_per_s"] = (s["events_in"] - prev["events_in"]) / dt
            s["examples_per_s"] = (s["examples_trained"] - prev["examples_trained"]) / dt
            s["qps"] = (s["requests"] - prev["requests"]) / dt
        self._prev = s
        self.samples.append(s)
        with open(self.run_dir / "timeline_demo.jsonl", "a") as f:
            f.write(json.dumps(s, default=_num) + "\n")
        return s


def _plot(run_dir: Path, samples: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["elapsed_s"] for s in samples]
    figs: list[tuple[str, str]] = []

    def save(name: str, title: str) -> None:
        plt.title(title)
        plt.xlabel("wall seconds of the closed loop")
        plt.grid(alpha=0.3)
        plt.tight_layout()
        plt.savefig(run_dir / name, dpi=90)
        plt.close()
        figs.append((name, title))

    plt.figure(figsize=(6, 3.2))
    plt.plot(t, [s.get("auc") for s in samples], label="click AUC (progressive)")
    plt.axhline(0.5, color="grey", lw=0.8, ls="--")
    plt.legend()
    save("auc.png", "Model: progressive validation AUC")

    plt.figure(figsize=(6, 3.2))
    for arm in ARMS:
        plt.plot(t, [s.get(f"{arm}_freshness_p99_s") for s in samples], label=f"arm {arm} p99")
        plt.plot(t, [s.get(f"{arm}_freshness_p50_s") for s in samples], label=f"arm {arm} p50", ls="--")
    plt.yscale("log")
    plt.ylabel("seconds")
    plt.legend()
    save("freshness.png", "Sync freshness: action arrival to serving (seconds)")

    plt.figure(figsize=(6, 3.2))
    for table in ("item_id", "user_id", "seller_id"):
        plt.plot(t, [(s["tables"].get(table) or {}).get("rows") for s in samples], label=f"{table} rows")
    for table in ("item_id",):
        plt.plot(t, [(s["tables"].get(table) or {}).get("expired") for s in samples], ls="--", label=f"{table} expired")
        plt.plot(
            t, [(s["tables"].get(table) or {}).get("filtered") for s in samples], ls=":", label=f"{table} filtered"
        )
    plt.legend(fontsize=7)
    save("tables.png", "Tables: rows held, IDs expired and filtered (cumulative)")

    plt.figure(figsize=(6, 3.2))
    for arm in ARMS:
        plt.plot(t, [s.get(f"{arm}_ctr") for s in samples], label=f"arm {arm} CTR")
    plt.legend()
    save("ctr.png", "Business: CTR per arm (cumulative)")
    return figs


def write_report(run_dir: Path, recorder: Recorder, final: dict[str, Any], config: Any) -> dict[str, Any]:
    samples = recorder.samples
    tables = final.get("tables", {})
    arms = {
        arm: {k: final.get(f"{arm}_{k}") for k in ("impressions", "clicks", "purchases", "ctr", "conversion",
                                                   "freshness_p50_s", "freshness_p99_s", "version")}
        for arm in ARMS
    }  # fmt: skip
    requests, errors = final["requests"], final["request_errors"] + final["event_post_errors"]
    qps = [s["qps"] for s in samples if s.get("qps") is not None]
    metrics: dict[str, Any] = {
        "run_dir": str(run_dir),
        "closed_loop_wall_s": final["elapsed_s"],
        "event_time_s": final["event_time"],
        "examples_trained": final["examples_trained"],
        "progressive_auc": _num(final.get("auc")),
        "progressive_logloss": _num(final.get("logloss")),
        "calibration": _num(final.get("calibration")),
        "freshness_p50_s": arms["A"]["freshness_p50_s"],
        "freshness_p99_s": arms["A"]["freshness_p99_s"],
        "serving": {
            "requests": requests,
            "errors": errors,
            "server_errors": final["server_errors"],
            "error_rate": (errors + final["server_errors"]) / requests if requests else None,
            "p50_ms": _num(final["latency_p50_ms"]),
            "p99_ms": _num(final["latency_p99_ms"]),
            "qps_mean": sum(qps) / len(qps) if qps else None,
        },
        "tables": tables,
        "rows_expired": sum(int(t.get("expired", 0)) for t in tables.values()),
        "ids_filtered": sum(int(t.get("filtered", 0)) for t in tables.values()),
        "arms": arms,
    }
    err = metrics["serving"]["error_rate"]
    metrics["checks"] = {
        "examples_trained > 0": metrics["examples_trained"] > 0,
        "progressive AUC > 0.5": (metrics["progressive_auc"] or 0) > 0.5,
        "freshness p99 <= 5 s": (metrics["freshness_p99_s"] or math.inf) <= 5.0,
        "serving error rate 0": err == 0,
        "rows expired > 0": metrics["rows_expired"] > 0,
        "IDs filtered > 0": metrics["ids_filtered"] > 0,
        "both arms have a CTR": all(arms[a]["ctr"] is not None for a in ARMS),
    }
    atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=1, default=_num).encode())
    figs = _plot(run_dir, samples) if samples else []
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{'pass' if v else 'FAIL'}</td></tr>" for k, v in metrics["checks"].items()
    )
    arm_rows = "".join(
        f"<tr><td>{a}</td><td>{_fmt(v['impressions'], 0)}</td><td>{_fmt(v['clicks'], 0)}</td>"
        f"<td>{_fmt(v['ctr'], 4)}</td><td>{_fmt(v['conversion'], 5)}</td><td>{_fmt(v['freshness_p99_s'], 2)}</td></tr>"
        for a, v in arms.items()
    )
    imgs = "".join(f"<figure><img src='{n}'><figcaption>{html.escape(t)}</figcaption></figure>" for n, t in figs)
    doc = f"""<!doctype html><meta charset="utf-8"><title>freshrec demo {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{padding:2px 10px;border-bottom:1px solid #ddd}} figure{{display:inline-block;margin:0.5em}}</style>
<h1>freshrec demo</h1>
<p>{final["elapsed_s"]:.0f} wall seconds of closed loop, {final["event_time"]:,.0f} s of event time
(speed {config.speed:g}x, seed {config.seed}); arm A applies sync deltas as they arrive, arm B every
{config.stale_apply_interval_s:g} wall seconds.</p>
<h2>Checks</h2><table>{rows}</table>
<h2>A/B arms</h2><table><tr><th>arm</th><th>impressions</th><th>clicks</th><th>CTR</th><th>conversion</th>
<th>freshness p99 (s)</th></tr>{arm_rows}</table>
<h2>Figures</h2>{imgs}
<h2>All final figures</h2><pre>{html.escape(json.dumps(metrics, indent=1, default=_num))}</pre>
"""
    atomic_write_bytes(run_dir / "report.html", doc.encode())
    return metrics


def _fmt(v: Any, digits: int) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:,.{digits}f}"
