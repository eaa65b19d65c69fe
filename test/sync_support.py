"""What the reconciler's tests share (test_sync*.py, test_data_loss.py,
test_operations.py): configurations, sync.py run in process or as a command,
the rows every partition holds, staged crashes, and SyncCase.

A SyncCase uses databases of its own on the shared four-server cluster (a fifth
partition is a second database on the first server), writes through the store
or, to stage what a crash or a restore leaves, straight into one partition's
engine, then runs sync.py in process (run()) or as a command.  Servers a test
kills are restarted before the next test.
"""
import collections
import concurrent.futures
import configparser
import dataclasses
import os
import subprocess
import sys
import unittest

import sync

from datastore import Datastore
from kvstore.coordinator.ring import RING_SIZE
from test import support
from test.mariadb import shared_cluster
from kvstore.coordinator.versions import Version, context_of, next_dot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC = os.path.join(HERE, 'sync.py')
FAST = dict(connect_timeout=0.5, read_timeout=2.0, backoff=0.3, max_backoff=1.0)


def config_of(partitions, sync_fields=None, **store):
    config = support.build_config(partitions, **dict(FAST, **store))
    return dataclasses.replace(config, **(sync_fields or {}))


def write_config(path, partitions, sync_fields=None, **store):
    """A configuration file for sync.py run as a command (WEBPY_ENV=test adds test_)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser['store'] = {k: str(v) for k, v in dict(support.STORE_DEFAULTS, **dict(FAST, **store)).items()}
    parser['sync'] = {k: str(v) for k, v in (sync_fields or {}).items()}
    for name, fields in partitions.items():
        parser['partition-' + name] = {k: str(v) for k, v in fields.items()}
    with open(path, 'w') as f:
        parser.write(f)
    return path


def run_command(path, *args, wait=True):
    command = [sys.executable, SYNC, '--config', path, '--no-progress'] + list(args)
    env = dict(os.environ, WEBPY_ENV='test')
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    return subprocess.run(command, capture_output=True, env=env, text=True, timeout=300)


def sync_once(config, *jobs, **options):
    """One in-process run, with a Datastore of its own (as a cron run has):
    ({job: JobResult}, Meter, exit status)."""
    store = Datastore(config)
    try:
        results, meter = sync.run(store, jobs or sync.JOBS, **options)
    finally:
        store.close()
    return {r.name: r for r in results}, meter, sync.exit_status(results)


def holdings(store):
    """{(bucket, key): {partition: sorted version ids}} over every partition."""
    found = collections.defaultdict(dict)
    for name, engine in store.engines.items():
        for bucket, key, version in engine.scan_points(0, RING_SIZE):
            found[(bucket, key)].setdefault(name, []).append(version.version_id)
    for held in found.values():
        for ids in held.values():
            ids.sort()
    return found


def bulk_load(store, bucket, keys, value=b'v'):
    """Write new keys on all their owners, exactly the rows a write with w=all
    leaves, with multi-row INSERTs (engine.insert_many): {key: Version}."""
    rows, versions = collections.defaultdict(list), {}
    for key in keys:
        owners = store.ring.preference_list(bucket, key, store.n)
        versions[key] = Version.new({}, (owners[0], 1), value, 'text/plain')
        for owner in owners:
            rows[owner].append((key, versions[key]))

    def load(name):
        for start in range(0, len(rows[name]), 2000):
            store.engines[name].insert_many([(bucket, k, v) for k, v in rows[name][start:start + 2000]])
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        for done in [pool.submit(load, name) for name in rows]:
            done.result()
    return versions


def crash_after_commit(store, bucket, key, value):
    """What a lazy write (w < N) leaves when its front end dies after the
    coordinator committed and marked it pending, before any other replica took
    it: the version and a pending marker on the coordinator only."""
    coordinator = store.ring.preference_list(bucket, key, store.n)[0]

    def decide(held):
        seen = context_of(held)
        return Version.new(seen, next_dot(coordinator, held, seen), value, 'text/plain')
    held, version = store.engines[coordinator].coordinate(bucket, key, decide)
    store.engines[coordinator].mark_pending(bucket, key, version.version_id)
    return version


class SyncCase(unittest.TestCase):
    engine = 'mysql'

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.config = config_of(self.partitions)
        self.store = Datastore(self.config)
        self.bucket = support.unique()
        self.opened = [self.store]

    def tearDown(self):
        for store in self.opened:
            store.close()
        shared_cluster()   # restarts what a test killed

    def open(self, partitions, **store):
        opened = Datastore(config_of(partitions, **store))
        self.opened.append(opened)
        return opened

    def put_all(self, keys, store=None, **options):
        store = store or self.store
        return {key: store.put(self.bucket, key, key.encode(), 'text/plain', **options).version for key in keys}

    def assertConverged(self, store, keys, values=None):
        """Every key is on exactly its preference list, every replica holding
        the same versions; with values, the current value is that one."""
        held = holdings(store)
        for key in keys:
            owners = store.ring.preference_list(self.bucket, key, store.n)
            replicas = held.get((self.bucket, key), {})
            self.assertEqual(sorted(replicas), sorted(owners), key)
            self.assertEqual(len({tuple(ids) for ids in replicas.values()}), 1, (key, replicas))
            if values is not None and key in values:
                self.assertEqual([v.value for v in store.get(self.bucket, key).current], [values[key]], key)
        extra = {k for k in held if k[0] == self.bucket} - {(self.bucket, k) for k in keys}
        self.assertEqual(extra, set())
