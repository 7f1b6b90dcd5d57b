"""Environment defaults for Prefect and Ray, set before either is imported (flows/__init__)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Flow/task-run INFO chatter off (each stage prints its own summary); INFO to see it.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
