"""What SQLite's synchronous = FULL costs the embedded default: sequential PUTs
(w=2 of N=3) over four SQLite partitions in one directory, with each setting.

    .venv/bin/python bench/sqlite_synchronous.py [DIRECTORY] [WRITES]

DIRECTORY should be on the disk to be measured (default: a temporary one).
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kvstore import engines  # noqa: E402
from test.support import open_store, sqlite_partitions  # noqa: E402


def measure(directory, writes, setting):
    engines.SQLiteEngine.synchronous = setting
    os.makedirs(directory, exist_ok=True)
    store = open_store(sqlite_partitions(directory))
    try:
        times = []
        for i in range(writes):
            started = time.perf_counter()
            store.put('bench', 'k%d' % (i % 100), b'x' * 100, 'text/plain')
            times.append(time.perf_counter() - started)
    finally:
        store.close()
    times.sort()
    return statistics.mean(times) * 1000, times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix='kvstore-sync-')
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    for setting in ('NORMAL', 'FULL'):
        mean, p50, p99 = measure(os.path.join(base, setting.lower()), writes, setting)
        print('synchronous = %-6s %d PUTs: mean %.2f ms, p50 %.2f ms, p99 %.2f ms' % (setting, writes, mean, p50, p99))


if __name__ == '__main__':
    main()
