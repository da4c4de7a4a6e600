"""Calibration: the Open Bandit random-policy click rate beside the simulator's, per policy, and
the simulator's ID churn. docs/simulator.md reports its output.

    PYTHONPATH=src python -m freshrec.sim.calibrate --hours 4 --json calib.json

Open Bandit (ZOZOTOWN, uniform-random logging policy) is the one real log here with a policy
that picks items at random, so its CTR is the right target for our random policy; the
simulator's ``random_ctr`` knob is set from it and the click model's bias is solved to match.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from freshrec.errors import DataError
from freshrec.sim.config import SimConfig
from freshrec.sim.simulator import Simulator
from freshrec.stream.events import Action, Event, Impression, ItemLifecycle

__all__ = ["id_churn", "open_bandit_ctr", "policy_ctr"]

CAMPAIGNS = ("all", "men", "women")


def open_bandit_ctr(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Impressions, clicks and CTR (overall and by position) of each Open Bandit random-policy
    campaign file, plus ``pooled`` over the three."""
    root = Path(data_dir) / "open-bandit" / "random"
    out: dict[str, dict[str, Any]] = {}
    pooled = [0, 0]
    for name in CAMPAIGNS:
        path = root / name / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{path}: Open Bandit file not found (set FRESHREC_DATA or --data)")
        n = clicks = 0
        by_pos: dict[int, list[int]] = {}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"click", "position"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: missing column(s) {sorted(missing)}")
            for row in reader:
                try:
                    c, p = int(row["click"]), int(row["position"])
                except ValueError as exc:
                    raise DataError(f"{path}, line {reader.line_num}: click/position not an int") from exc
                n += 1
                clicks += c
                s = by_pos.setdefault(p, [0, 0])
                s[0] += 1
                s[1] += c
        if n == 0:
            raise DataError(f"{path}: no rows")
        out[name] = {
            "impressions": n,
            "clicks": clicks,
            "ctr": clicks / n,
            "ctr_by_position": {p: c / m for p, (m, c) in sorted(by_pos.items())},
        }
        pooled[0] += n
        pooled[1] += clicks
    out["pooled"] = {"impressions": pooled[0], "clicks": pooled[1], "ctr": pooled[1] / pooled[0]}
    return out


def policy_ctr(config: SimConfig, hours: float) -> tuple[dict[str, float], list[Event]]:
    """Run ``hours`` of event time under ``config.policy``; CTR, actions per impression and speed."""
    sim = Simulator(config)
    start = time.perf_counter()
    events = sim.run(config.start_time + hours * 3600.0)
    wall = time.perf_counter() - start
    s = sim.stats
    actions = s.clicks + s.bids + s.add_to_carts + s.purchases
    return {
        "impressions": s.impressions,
        "clicks": s.clicks,
        "ctr": s.clicks / max(s.impressions, 1),
        "actions_per_impression": actions / max(s.impressions, 1),
        "purchases_per_click": s.purchases / max(s.clicks, 1),
        "bids_per_click": s.bids / max(s.clicks, 1),
        "impressions_per_wall_s": s.impressions / wall,
        "events_per_wall_s": len(events) / wall,
        "wall_s": wall,
    }, events


def id_churn(events: list[Event], start_time: float, hours: float) -> dict[str, float]:
    """How fast IDs come and go in a stream: new items per hour, and how often an ID is seen."""
    item_shows: Counter = Counter()
    user_requests: dict[Any, set] = {}
    listed = ended = 0
    shown_by_hour: dict[int, set] = {}
    for e in events:
        if isinstance(e, Impression):
            item_shows[e.item_id] += 1
            user_requests.setdefault(e.user_id, set()).add(e.request_id)
            shown_by_hour.setdefault(int((e.event_time - start_time) // 3600), set()).add(e.item_id)
        elif isinstance(e, ItemLifecycle):
            if e.status == "listed" and e.event_time > start_time:
                listed += 1
            elif e.status == "ended":
                ended += 1
        elif isinstance(e, Action):
            pass
    shows = list(item_shows.values())
    n_items = max(len(shows), 1)
    hours_seen = sorted(shown_by_hour)
    new_share = [
        len(shown_by_hour[h] - shown_by_hour[h - 1]) / len(shown_by_hour[h])
        for h in hours_seen
        if h - 1 in shown_by_hour and shown_by_hour[h]
    ]
    one_request = sum(1 for r in user_requests.values() if len(r) == 1)
    return {
        "items_listed_per_hour": listed / hours,
        "items_ended_per_hour": ended / hours,
        "item_ids_shown": len(shows),
        "item_ids_shown_once_share": sum(1 for c in shows if c == 1) / n_items,
        "item_ids_shown_at_most_5_share": sum(1 for c in shows if c <= 5) / n_items,
        "item_ids_new_each_hour_share": sum(new_share) / len(new_share) if new_share else float("nan"),
        "user_ids_seen": len(user_requests),
        "user_ids_one_request_share": one_request / max(len(user_requests), 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FRESHREC_DATA", str(Path.cwd().parent / "shared" / "data")))
    parser.add_argument("--hours", type=float, default=4.0, help="event hours per policy run")
    parser.add_argument("--oracle-hours", type=float, default=1.0, help="the oracle is ~20x slower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"open_bandit": open_bandit_ctr(args.data), "policies": {}, "churn": {}}
    for policy in ("random", "popularity", "oracle"):
        hours = args.oracle_hours if policy == "oracle" else args.hours
        cfg = SimConfig(seed=args.seed, policy=policy)
        stats, events = policy_ctr(cfg, hours)
        stats["hours"] = hours
        result["policies"][policy] = stats
        result["churn"][policy] = id_churn(events, cfg.start_time, hours)
        del events
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _print(result: dict[str, Any]) -> None:
    ob = result["open_bandit"]
    for name in (*CAMPAIGNS, "pooled"):
        r = ob[name]
        print(f"open-bandit {name:7s} impressions {r['impressions']:7d} clicks {r['clicks']:4d} CTR {r['ctr']:.4%}")
    for policy, r in result["policies"].items():
        print(
            f"sim {policy:10s} {r['hours']:.1f} h: impressions {r['impressions']:8d} CTR {r['ctr']:.4%} "
            f"actions/impression {r['actions_per_impression']:.4%} "
            f"({r['impressions_per_wall_s']:,.0f} impressions/s)"
        )
    for policy, churn in result["churn"].items():
        for k, v in churn.items():
            print(f"churn {policy:10s} {k}: {v:,.4g}")


if __name__ == "__main__":  # pragma: no cover
    main()
