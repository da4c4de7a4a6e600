"""Event stream: the typed event schema (events.py) and the event log backends (owned by the log)."""
