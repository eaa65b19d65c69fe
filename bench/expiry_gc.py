"""sync.py gc on a store of many keys, some expired: the query plan of its
expiry pass and the time of two runs (docs/SPEED.md, "Expiry and gc").

    WEBPY_ENV=test .venv/bin/python bench/expiry_gc.py [KEYS [EXPIRED]]

over the test harness's private MariaDB servers (test/mariadb.py), with the
rows loaded as test/sync_support.py's bulk_load does (engine.insert_many)."""
import collections
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('WEBPY_ENV', 'test')

from datastore import Datastore  # noqa: E402
from kvstore.coordinator.versions import Version  # noqa: E402
from test import support  # noqa: E402
from test.mariadb import shared_cluster  # noqa: E402
from test.sync_support import config_of, sync_once  # noqa: E402


def load(store, bucket, keys, expired):
    """keys keys on their owners, every (keys // expired)th expired 10 s ago."""
    rows, past = collections.defaultdict(list), (int(time.time()) - 10) * 10 ** 6
    for i in range(keys):
        key = 'k%07d' % i
        owners = store.ring.preference_list(bucket, key, store.n)
        version = Version.new({}, (owners[0], 1), b'v', 'text/plain',
                              expires=past if i % (keys // expired) == 0 else 0)
        for owner in owners:
            rows[owner].append((bucket, key, version))

    def insert(name):
        for start in range(0, len(rows[name]), 5000):
            store.engines[name].insert_many(rows[name][start:start + 5000])
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        list(pool.map(insert, rows))
    return sum(map(len, rows.values()))


def main(keys, expired):
    config = config_of(support.mariadb_partitions(shared_cluster()), max_clock_skew=1, read_timeout=60.0,
                       connect_timeout=5.0)
    store = Datastore(config)
    try:
        started = time.monotonic()
        count = load(store, 'many', keys, expired)
        print('loaded %d keys (%d rows) in %.0f s' % (keys, count, time.monotonic() - started), flush=True)
        engine = store.engines['p1']
        with engine._cursor() as cursor:
            engine._execute(cursor, 'ANALYZE TABLE objects')
            cursor.fetchall()
            engine._execute(cursor, 'EXPLAIN ' + engine.expired_query, (time.time_ns() // 1000, 500))
            print('EXPLAIN', cursor.fetchall())
            engine._execute(cursor, 'SELECT COUNT(*) FROM objects')
            print('rows on p1', cursor.fetchall()[0][0])
        for label in ('reaps %d expired keys' % expired, 'finds none'):
            started = time.monotonic()
            results, _, _ = sync_once(config, 'gc')
            print('gc %s: %.2f s, %s' % (label, time.monotonic() - started, results['gc'].summary), flush=True)
    finally:
        store.close()


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000000, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
