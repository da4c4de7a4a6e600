"""Benchmarks: scripts, not timed tests. ``freshrec bench PART`` runs one of them.

Each part measures freshrec beside a baseline in the same run (these machines are shared and
noisy, so only ratios travel) and reports through :class:`freshrec.bench._report.BenchReport`:
a rich table on the terminal and one JSON object
``{"bench": PART, "figures": {...}, "ratios": {...}, "params": {...}}``.
May import anything in freshrec; nothing imports it but the CLI.
"""
