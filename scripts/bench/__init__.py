"""Helpers of scripts/bench.py (the speed benchmark): data, mounts, servers, report.

fakeci.py, files.py and proxy.py run as their own processes (`python scripts/bench/X.py`);
common.py, data.py, mounts.py and report.py are imported by scripts/bench.py. This package
takes precedence over bench.py itself for `import bench` from scripts/ (a directory with
__init__.py is found before a module of the same name).
"""
