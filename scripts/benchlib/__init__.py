"""Helpers of scripts/bench.py (the speed benchmark): data, mounts, servers, report.

fakeci.py, files.py and proxy.py run as their own processes (`python scripts/benchlib/X.py`);
common.py, data.py, mounts.py and report.py are imported by scripts/bench.py.
"""
