"""What the benchmark asks of the systems: the key law (YCSB's zipfian, the
same as bench/lua/common.lua), the rows (a workload each: which system,
which wrk script, which mix) and the data sets they run over, loaded into
MariaDB exactly as the store writes them and into etcd alike."""
import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import random
import signal
import time

from bench.common import (BIG_BUCKET, CONTENT_TYPE, KEY_FORMAT, KIB, MIB, THETA, BenchError)
from bench.servers import b64, etcd_call


# -- the key law ------------------------------------------------------------------

class Zipfian:
    """YCSB's zipfian generator; the same law as bench/lua/common.lua."""

    def __init__(self, n, theta=THETA, seed=42):
        self.n, self.theta = n, theta
        self.zetan = math.fsum(1.0 / (i ** theta) for i in range(1, n + 1))
        zeta2 = 1 + 1 / (2 ** theta)
        self.alpha = 1 / (1 - theta)
        self.eta = (1 - (2 / n) ** (1 - theta)) / (1 - zeta2 / self.zetan)
        self.half = 1 + 0.5 ** theta
        self.multiplier = scramble_multiplier(n)
        self.random = random.Random(seed)

    def rank(self):
        u = self.random.random()
        uz = u * self.zetan
        if uz < 1:
            return 0
        if uz < self.half:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * u - self.eta + 1) ** self.alpha))

    def next(self):
        return (self.rank() * self.multiplier) % self.n


def scramble_multiplier(n):
    """A prime coprime with n: rank * it mod n is a permutation of the keys
    (popular ranks spread over the key space), and small enough that Lua's
    doubles compute it exactly."""
    for prime in (104729, 104723, 104717, 7919):
        if math.gcd(prime, n) == 1:
            return prime
    return 1


def key_name(index):
    return KEY_FORMAT % index


def key_law_env(keys):
    """The environment of bench/lua/common.lua for `keys` keys."""
    return {'BENCH_KEYS': str(keys), 'BENCH_SCRAMBLE': str(scramble_multiplier(keys)), 'BENCH_THETA': str(THETA)}


# -- rows -----------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    name: str
    system: str               # store, hello, floor, etcd or pymysql
    what: str
    script: str = None        # bench/lua/<script>
    env: dict = dataclasses.field(default_factory=dict)
    big: bool = False         # 1 MiB values: a quarter of the connections
    etcd: str = None          # the matching etcd row
    per_request: int = 1      # keys a request reads or writes (a batch's): an eighth of the connections
    versus: str = None        # the row of single requests a batch row is compared with, key for key
    feed: bool = False        # a feed reader follows the bucket meanwhile (bench/feed.py): its lag is measured


def _reference_rows():
    return [
        Row('hello', 'hello', 'web.py hello world (GET /), same server settings: the ceiling',
            'fixed.lua', {'BENCH_EXPECT': 'Hello'}),
        Row('pymysql', 'pymysql', 'PyMySQL primary-key SELECT loop on one server, one connection: '
            "the database's own cost"),
        Row('floor', 'floor', 'hello world + the engine reading the key on its first owner '
            '(bench/floor.py): the floor under GET r=one', 'kv.lua', {'BENCH_READ': '1'}, etcd='etcd-C'),
    ]


def _store_rows():
    rows = []
    for mix, read, etcd in (('C', '1', 'etcd-C'), ('B', '0.95', 'etcd-B'), ('A', '0.5', 'etcd-A'),
                            ('W', '0', 'etcd-W')):
        for q in ('one', 'quorum'):
            label = {'C': 'GET r=%s' % q, 'B': '95%% GET r=%s / 5%% PUT w=%s' % (q, q),
                     'A': '50%% GET r=%s / 50%% PUT w=%s' % (q, q), 'W': 'PUT w=%s' % q}[mix]
            rows.append(Row('%s-%s' % (mix, q), 'store', '%s: %s, 1 KiB' % (mix, label), 'kv.lua',
                            {'BENCH_READ': read, 'BENCH_R': q, 'BENCH_W': q}, etcd=etcd))
    return rows + [
        Row('W-feed', 'store', 'W: PUT w=quorum, 1 KiB, with a feed reader following the bucket (SSE)', 'kv.lua',
            {'BENCH_READ': '0', 'BENCH_R': 'quorum', 'BENCH_W': 'quorum'}, etcd='etcd-W', feed=True),
        Row('C-1MiB', 'store', 'GET r=quorum, 1 MiB values', 'kv.lua',
            {'BENCH_READ': '1', 'BENCH_R': 'quorum', 'BENCH_BUCKET': BIG_BUCKET}, big=True,
            etcd='etcd-C-1MiB'),
        Row('W-1MiB', 'store', 'PUT w=quorum, 1 MiB values', 'kv.lua',
            {'BENCH_READ': '0', 'BENCH_W': 'quorum', 'BENCH_BUCKET': BIG_BUCKET,
             'BENCH_VALUE_BYTES': str(MIB)}, big=True, etcd='etcd-W-1MiB'),
        Row('list', 'store', 'GET /buckets/bench/keys?limit=1000 from a random cursor', 'list.lua',
            {'BENCH_EXPECT': '"keys"'}, etcd='etcd-list'),
        Row('C-batch', 'store', 'batch of 100 GETs r=quorum (POST /buckets/bench/batch) of consecutive keys from a '
            'random one, 1 KiB', 'batch.lua',
            {'BENCH_READ': '1', 'BENCH_R': 'quorum', 'BENCH_BATCH': '100', 'BENCH_EXPECT': '"results"'},
            per_request=100, versus='C-quorum'),
        Row('W-batch', 'store', 'batch of 100 PUTs w=quorum (POST /buckets/bench/batch) of consecutive keys from a '
            'random one, 1 KiB', 'batch.lua',
            {'BENCH_READ': '0', 'BENCH_W': 'quorum', 'BENCH_BATCH': '100', 'BENCH_EXPECT': '"results"'},
            per_request=100, versus='W-quorum'),
    ]


def _etcd_rows():
    return [
        Row('etcd-C', 'etcd', 'etcd range (get), 1 KiB', 'etcd.lua',
            {'BENCH_READ': '1', 'BENCH_EXPECT': '"kvs"'}),
        Row('etcd-B', 'etcd', 'etcd 95% range / 5% put, 1 KiB', 'etcd.lua', {'BENCH_READ': '0.95'}),
        Row('etcd-A', 'etcd', 'etcd 50% range / 50% put, 1 KiB', 'etcd.lua', {'BENCH_READ': '0.5'}),
        Row('etcd-W', 'etcd', 'etcd put, 1 KiB', 'etcd.lua', {'BENCH_READ': '0'}),
        Row('etcd-C-1MiB', 'etcd', 'etcd range, 1 MiB values', 'etcd.lua',
            {'BENCH_READ': '1', 'BENCH_BUCKET': BIG_BUCKET, 'BENCH_EXPECT': '"kvs"'}, big=True),
        Row('etcd-W-1MiB', 'etcd', 'etcd put, 1 MiB values', 'etcd.lua',
            {'BENCH_READ': '0', 'BENCH_BUCKET': BIG_BUCKET, 'BENCH_VALUE_BYTES': str(MIB)}, big=True),
        Row('etcd-list', 'etcd', 'etcd range of 1000 keys (keys only) from a random key', 'etcd.lua',
            {'BENCH_MODE': 'list', 'BENCH_EXPECT': '"kvs"'}),
    ]


def main_rows():
    """Every row of a main run, in the order they are reported."""
    return _reference_rows() + _store_rows() + _etcd_rows()


def row_named(name):
    return next(r for r in main_rows() if r.name == name)


def select_rows(rows, only):
    if not only:
        return rows
    patterns = [p.strip() for p in ','.join(only).split(',') if p.strip()]
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not chosen:
        raise BenchError('--only %s matches no row; rows: %s' % (','.join(patterns),
                                                                 ', '.join(r.name for r in rows)))
    return chosen


# -- the data sets ----------------------------------------------------------------------

def value_for(index, size, filler):
    head = b'%08d:' % index
    return (head + filler)[:size] if size > len(head) else head[:size]


def make_filler(count, value_bytes):
    """The bytes after each value's index: printable, the same for a data set."""
    chunk = bytes(random.Random(count).randrange(97, 123) for _ in range(min(value_bytes, 4096)))
    return (chunk * (value_bytes // len(chunk) + 1))[:value_bytes]


class _Recorder:
    """A cursor that records the statements an engine runs instead of running them."""

    def __init__(self):
        self.calls = []

    def execute(self, statement, args=()):
        if statement.startswith('INSERT INTO objects'):   # a version's row; a loaded key logs no change (feed)
            self.calls.append((statement, args))


@contextlib.contextmanager
def open_datastore(config_path):
    """A Datastore on the configuration at config_path, closed on leaving."""
    from kvstore import configuration
    from datastore import Datastore
    store = Datastore(configuration.load(config_path))
    try:
        yield store
    finally:
        store.close()


def _load_slice(job):
    """Write keys start, start + step, ... < count (one process of bulk_load)."""
    from kvstore.coordinator.versions import Version, next_dot
    from kvstore.engines.keys import Keys

    config_path, bucket, start, count, step, value_bytes = job
    filler = make_filler(count, value_bytes)
    batch_rows = max(1, (512 * KIB) // max(value_bytes, 1))
    batches = {}  # (partition, statement) -> rows
    recorder = _Recorder()
    with open_datastore(config_path) as store:
        def send(name, statement):
            with store.engines[name]._cursor() as cursor:
                cursor.executemany(statement, batches.pop((name, statement)))

        for index in range(start, count, step):
            key = key_name(index)
            preference = store.placement(bucket, key)[0]  # the store's own choice of the key's N owners
            # What the coordinator (the first replica) makes for a new key ...
            dot = next_dot(store.engines[preference[0]].actor, [], {})
            version = Version.new({}, dot, value_for(index, value_bytes, filler), CONTENT_TYPE)
            # ... and the INSERT with which the engine stores it, on each replica
            # (Keys._insert: statement and arguments; MySQLEngine's own binds
            # them into one text once a write).
            Keys._insert(store.engines[preference[0]], recorder, bucket, key, version)
            for statement, row in recorder.calls:
                for name in preference:
                    batch = batches.setdefault((name, statement), [])
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        send(name, statement)
            recorder.calls = []
        for name, statement in list(batches):
            send(name, statement)


def _loader_signals():
    """A loader process dies on SIGTERM (Pool.terminate) without running the
    handlers it inherited: those would clean up the parent's servers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent cleans up


def bulk_load(config_path, bucket, count, value_bytes, processes=None):
    """Write `count` keys (KEY_FORMAT) of value_bytes each, fast and exactly as the store would.

    A fresh key's PUT makes Version.new(seen={}, dot=next_dot(coordinator's actor), ...) on the
    key's first replica and stores that version on each of its N replicas.  Here
    the engine itself renders those INSERTs (Keys._insert into a recording
    cursor) and they go out as batched multi-row INSERTs (PyMySQL's executemany),
    from parallel processes: threads would queue on the GIL.  Then a sample is
    read back through Datastore.get from every replica, and one key is written
    again by Datastore.put to check that its rows are the loader's.
    """
    import multiprocessing

    started = time.monotonic()
    processes = processes or min(max(1, count // 2000), 2 * (os.cpu_count() or 1))
    jobs = [(config_path, bucket, k, count, processes, value_bytes) for k in range(processes)]
    if processes == 1:
        _load_slice(jobs[0])
    else:
        with multiprocessing.get_context('fork').Pool(processes, initializer=_loader_signals) as pool:
            pool.map(_load_slice, jobs, chunksize=1)
    seconds = time.monotonic() - started
    with open_datastore(config_path) as store:
        filler = make_filler(count, value_bytes)
        sample = random.Random(1).sample(range(count), min(count, 20))
        for index in sample:
            read_back(store, bucket, index, value_for(index, value_bytes, filler))
        same_rows_as_put(store, bucket, sample[0], value_for(sample[0], value_bytes, filler))
    return seconds


def put_load(config_path, bucket, count, value_bytes, threads=1):
    """Write keys through Datastore.put itself (for few keys: the 1 MiB ones).

    One writer by default: the data set must be whole, and every owner is
    checked for every key afterwards."""
    import concurrent.futures

    started = time.monotonic()
    with open_datastore(config_path) as store:
        filler = make_filler(count, value_bytes)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(store.put, bucket, key_name(i), value_for(i, value_bytes, filler), CONTENT_TYPE,
                                  w=store.n) for i in range(count)]:
                f.result()
        for index in range(count):
            read_back(store, bucket, index, value_for(index, value_bytes, filler))
            key = key_name(index)
            missing = [p for p in store.placement(bucket, key)[0] if not store.engines[p].read(bucket, key)]
            if missing:
                raise BenchError('%s/%s is missing on %s after Datastore.put' % (bucket, key, ', '.join(missing)))
    return time.monotonic() - started


def read_back(store, bucket, index, value):
    current = store.get(bucket, key_name(index), r=store.n).current
    if len(current) != 1 or current[0].value != value or current[0].content_type != CONTENT_TYPE:
        raise BenchError('key %s/%s did not read back as loaded: %d live versions%s' % (
            bucket, key_name(index), len(current), ', %d bytes of %s' % (
                len(current[0].value), current[0].content_type) if current else ''))


def _raw_rows(store, bucket, key):
    """{partition: [{column: value}]} of every table row naming the key but
    the change feed's log (the loader logs no history)."""
    found = {}
    for name, engine in store.engines.items():
        with engine._cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                           "AND column_name = 'key_name'")
            tables = sorted(row[0] if isinstance(row[0], str) else row[0].decode() for row in cursor.fetchall())
            tables = [table for table in tables if table != 'changes']
            rows = []
            for table in tables:
                # The engines' cursor reads answers without their column names.
                cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                               "AND table_name = %s ORDER BY ordinal_position", (table,))
                columns = [c[0] if isinstance(c[0], str) else c[0].decode() for c in cursor.fetchall()]
                cursor.execute('SELECT * FROM `%s` WHERE bucket = %%s AND key_name = %%s' % table,
                               (bucket.encode(), key.encode()))
                rows += [dict(zip(columns, row), _table=table) for row in cursor.fetchall()]
            found[name] = rows
    return found


def _without_counter(clock):
    """A clock column with its dot's counter left out: a counter is no lower than
    the time it was issued (versions.next_dot), so the loader's and a later put's differ."""
    document = json.loads(clock)
    document['dot'][1] = None
    return json.dumps(document, sort_keys=True)


def _comparable(rows):
    """Rows without what differs between two writes of the same value: the
    fresh id, the time, the dot's counter and the change number (seq)."""
    return sorted(sorted((k, _without_counter(v) if k == 'clock' else v) for k, v in r.items()
                         if k not in ('version_id', 'modified', 'seq')) for r in rows)


def same_rows_as_put(store, bucket, index, value):
    """Write a loaded key again through Datastore.put, as a new key, and compare its
    rows on every partition with the loader's."""
    key = key_name(index)
    loaded = _raw_rows(store, bucket, key)
    for name, engine in store.engines.items():
        with engine._cursor() as cursor:
            for table in {r['_table'] for r in loaded[name]}:
                cursor.execute('DELETE FROM `%s` WHERE bucket = %%s AND key_name = %%s' % table,
                               (bucket.encode(), key.encode()))
    store.put(bucket, key, value, CONTENT_TYPE, w=store.n)
    deadline = time.monotonic() + 10
    while True:
        put = _raw_rows(store, bucket, key)
        if all(r['_table'] == 'objects' for rows in put.values() for r in rows) or time.monotonic() > deadline:
            break  # a lazy write's pending marker is cleared in the background
        time.sleep(0.1)
    for name in store.engines:
        if _comparable(loaded[name]) != _comparable(put[name]):
            raise BenchError('the loader\'s rows of %s/%s on %s differ from what Datastore.put writes:\n'
                             'loader: %r\nput:    %r' % (bucket, key, name, _comparable(loaded[name])[:1],
                                                         _comparable(put[name])[:1]))


def etcd_load(port, bucket, count, value_bytes):
    """The store's keys and values, as "{bucket}/{key}", in transactions of 128 puts."""
    started = time.monotonic()
    filler = make_filler(count, value_bytes)
    per_txn = max(1, min(128, (768 * KIB) // max(value_bytes, 1)))
    for start in range(0, count, per_txn):
        puts = [{'request_put': {'key': b64('%s/%s' % (bucket, key_name(i))),
                                 'value': b64(value_for(i, value_bytes, filler))}}
                for i in range(start, min(count, start + per_txn))]
        if len(puts) == 1:
            etcd_call(port, '/v3/kv/put', puts[0]['request_put'])
        else:
            etcd_call(port, '/v3/kv/txn', {'success': puts})
    found = etcd_call(port, '/v3/kv/range', {'key': b64(bucket + '/'), 'range_end': b64(bucket + '0'),
                                            'count_only': True})
    if int(found.get('count', 0)) != count:
        raise BenchError('etcd holds %s keys of %s, not %d' % (found.get('count'), bucket, count))
    return time.monotonic() - started


def queries_per_request(config_path, cluster, bucket, count=300):
    """What one request costs, counted in process, one request at a time on
    count keys of a bucket of its own, for a PUT (w=2) of a new key, one
    overwriting it, a GET r=1 and a GET r=2: {operation: (round trips,
    statements, commits, fsyncs, CPU ms of the databases, CPU ms of the front
    end)} per request.  Round trips are the queries the engines send
    (kvstore/engines/mysqlwire.send); statements, commits and fsyncs the
    databases' Questions, Com_commit and Innodb_data_fsyncs, read once the
    write's background work is done;
    CPU from /proc (the databases, in clock ticks: hence so many requests) and
    time.process_time (this process: the front end without its HTTP layer).  One request at a time, the CPU is steadier than
    under wrk's load, and shares nothing with other requests."""
    from bench.measurement import CPUSnapshot
    from bench.servers import mariadb_status
    from kvstore.engines import mysqlwire

    sent = [0]
    send = mysqlwire.send

    def counting_send(conn, sql):
        sent[0] += 1
        return send(conn, sql)

    put = lambda store, key: store.put(bucket, key, b'x' * KIB, CONTENT_TYPE, w=2)
    operations = [('PUT w=2, new key', put), ('PUT w=2', put),
                  ('GET r=1', lambda store, key: store.get(bucket, key, r=1)),
                  ('GET r=2', lambda store, key: store.get(bucket, key, r=2))]
    databases = {'db': [s.pid for s in cluster if s.pid]}
    counted = {}
    mysqlwire.send = counting_send
    try:
        with open_datastore(config_path) as store:
            for name, operation in operations:
                operation(store, key_name(count))   # connections opened, buckets cached
                time.sleep(1.0)
                before, sent[0] = mariadb_status(cluster, 4), 0
                cpu, front = CPUSnapshot(databases), time.process_time()
                for index in range(count):
                    operation(store, key_name(index))
                front, spent = time.process_time() - front, CPUSnapshot(databases).since(cpu)
                time.sleep(1.0)   # pending markers dropped, replicas past W answered
                after, trips = mariadb_status(cluster, 4), sent[0]
                counted[name] = (trips / count, (after['Questions'] - before['Questions']) / count,
                                 (after['Com_commit'] - before['Com_commit']) / count,
                                 (after['Innodb_data_fsyncs'] - before['Innodb_data_fsyncs']) / count,
                                 spent['db'] / count, front * 1000.0 / count)
    finally:
        mysqlwire.send = send
    return counted
