"""perdure's benchmark suite (issue 5): ``python -m benchmarks``.

Runs workloads W1-W7 on perdure (SQLite and a throwaway PostgreSQL), the database's
raw commit limit, and the same workloads on DBOS and Temporal when the ``bench`` extra
is installed (``pip install -e '.[bench]'``); prints one table.
"""
