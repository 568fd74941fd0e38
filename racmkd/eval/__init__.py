"""Measurement: metrics (metrics.py), costs (cost.py), the run report (report.py) and its plots (plots.py)."""
