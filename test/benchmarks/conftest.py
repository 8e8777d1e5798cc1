"""The benchmarks are run by ``test/benchmarks/run.py``, never collected by pytest."""

collect_ignore_glob = ["*.py"]
