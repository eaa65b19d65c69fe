"""A partition's storage (kvstore/engines/), on SQLite and on real MariaDB servers.

A replica is sent a version with the ids of the versions the coordinator
replaced by it.  Whatever the replica held, it ends up holding exactly the
versions no other one supersedes: whether it takes the version in one call
(apply) or in the two halves a write uses to reach every replica at once
(send_apply, then finish_apply: on MariaDB one compound statement; on SQLite
send_apply is apply).

Every kind of query an engine makes, hot and cold, answers the same on both
engines; on MariaDB every answer is read by kvstore/engines/mysqlwire.py,
never by PyMySQL's own reader (which only connects).  A partition's pool
reports its idle and taken connections.
"""
import threading
import time
import traceback
import unittest

import pymysql

from kvstore.coordinator.ring import key_point
from kvstore.coordinator.versions import Version
from test import support
from test.test_versions import write


class ApplySpecification(support.StoreSpecification):
    halves = False

    def setUp(self):
        super().setUp()
        self.engine = self.store.engines['p1']

    def apply(self, key, version, superseded=None):
        if self.halves and superseded is not None:
            return self.engine.finish_apply(self.engine.send_apply(self.bucket, key, version, superseded))
        return self.engine.apply(self.bucket, key, version, superseded)

    def holds(self, key):
        return sorted(v.version_id for v in self.engine.read(self.bucket, key))

    def test_a_replica_holding_what_the_coordinator_held_ends_with_the_new_version(self):
        old = write('p2')
        new = write('p2', held=[old])
        self.apply('k', old)
        self.assertTrue(self.apply('k', new, [old.version_id]))
        self.assertEqual(self.holds('k'), [new.version_id])
        self.assertEqual(self.engine.read(self.bucket, 'k')[0].value, new.value)

    def test_a_new_key_is_added(self):
        first = write('p2')
        self.assertTrue(self.apply('fresh', first, []))
        self.assertEqual(self.holds('fresh'), [first.version_id])

    def test_the_same_version_twice_is_stored_once(self):
        first = write('p2')
        self.assertTrue(self.apply('twice', first, []))
        self.assertTrue(self.apply('twice', first, []))
        self.assertEqual(self.holds('twice'), [first.version_id])

    def test_a_replica_holding_a_newer_version_keeps_only_that(self):
        old = write('p2')
        new = write('p2', held=[old])
        newer = write('p3', held=[new])
        self.apply('k', newer)
        self.assertFalse(self.apply('k', new, [old.version_id]))
        self.assertEqual(self.holds('k'), [newer.version_id])

    def test_a_sibling_the_coordinator_did_not_hold_stays_beside_the_new_version(self):
        base = write('p2')
        mine = write('p2', held=[base], context=base.full_clock)
        theirs = write('p3', held=[base], context=base.full_clock)
        self.apply('k', base)
        self.apply('k', theirs)
        self.assertTrue(self.apply('k', mine, [base.version_id]))
        self.assertEqual(self.holds('k'), sorted([mine.version_id, theirs.version_id]))

    def test_an_older_version_the_coordinator_did_not_list_is_dropped(self):
        # The replica holds a version the new one supersedes but the coordinator
        # no longer held (it had replaced it already): it goes too.
        first = write('p2')
        second = write('p2', held=[first])
        third = write('p2', held=[second])
        self.apply('k', first)
        self.assertTrue(self.apply('k', third, [second.version_id]))
        self.assertEqual(self.holds('k'), [third.version_id])


def pymysql_reads(test):
    """The answers PyMySQL's own reader (Connection._read_packet) reads, other
    than while connecting, from now until the test ends: where each was read."""
    connection = pymysql.connections.Connection
    read_packet, connect = connection._read_packet, connection.connect
    local, reads = threading.local(), []

    def connecting(conn, *args, **kwargs):
        local.connecting = True
        try:
            return connect(conn, *args, **kwargs)
        finally:
            local.connecting = False

    def reading(conn, *args, **kwargs):
        if not getattr(local, 'connecting', False):
            reads.append(''.join(traceback.format_stack(limit=8)))
        return read_packet(conn, *args, **kwargs)

    connection.connect, connection._read_packet = connecting, reading
    test.addCleanup(setattr, connection, 'connect', connect)
    test.addCleanup(setattr, connection, '_read_packet', read_packet)
    return reads


class QueriesSpecification(support.StoreSpecification):
    """Each role's queries (keys, chunks, hints, buckets, the reconciler's) and
    their answers."""

    def setUp(self):
        super().setUp()
        self.engine, self.other = self.store.engines['p1'], self.store.engines['p2']
        self.reads = pymysql_reads(self)

    def tearDown(self):
        if self.reads_by_pymysql_counted and self.reads:
            self.fail('PyMySQL read %d packets of answers itself, the first here:\n%s'
                      % (len(self.reads), self.reads[0]))

    def coordinate(self, key, value=b'v', **fields):
        return self.engine.coordinate(self.bucket, key, lambda held: Version.new(
            {}, (self.engine.actor, len(held) + 1), value, 'text/plain', **fields))[1]

    def test_keys_read_written_listed_and_marked_pending(self):
        first = self.coordinate('k')
        self.assertEqual([v.version_id for v in self.engine.read(self.bucket, 'k')], [first.version_id])
        self.assertEqual(self.engine.finish_read(self.engine.send_read(self.bucket, 'k'))[0].value, b'v')
        second = write('p2', held=[first])
        self.assertTrue(self.engine.finish_apply(self.engine.send_apply(self.bucket, 'k', second,
                                                                        [first.version_id])))
        self.assertTrue(self.engine.apply(self.bucket, 'j', second))
        self.assertEqual([(row[0], row[1]) for row in self.engine.scan(self.bucket, '', None, 10)],
                         [('j', second.version_id.encode()), ('k', second.version_id.encode())])
        # A transaction whose work fails is rolled back.
        with self.assertRaises(ZeroDivisionError):
            self.engine.coordinate(self.bucket, 'k', lambda held: 1 / 0)
        self.engine.mark_pending(self.bucket, 'k', second.version_id)
        self.assertEqual([m[:3] for m in self.engine.pending_markers(10, (self.bucket, '', ''))
                          if m[0] == self.bucket], [(self.bucket, 'k', second.version_id)])
        self.engine.clear_pending([(self.bucket, 'k', second.version_id)])
        self.assertEqual(self.engine.pending_markers(10, (self.bucket, '', '')), [])
        # Many at once (in more than one statement), and only those named.
        marked = [(self.bucket, 'm%03d' % i, '%032x' % i) for i in range(250)]
        for marker in marked:
            self.engine.mark_pending(*marker)
        self.engine.clear_pending(marked[1:] + [(self.bucket, 'never', 'marked')])
        self.assertEqual([m[:3] for m in self.engine.pending_markers(300, (self.bucket, '', ''))], marked[:1])
        self.engine.clear_pending(marked[:1])
        self.assertEqual(self.engine.delete_versions(self.bucket, 'k', [second.version_id, 'none']), 1)
        self.assertEqual(self.engine.delete_versions(self.bucket, 'k', [second.version_id]), 0)
        self.assertEqual(self.engine.read(self.bucket, 'k'), [])

    def test_chunks_written_read_copied_and_collected(self):
        version_id = 'c' * 32
        for seq, data in enumerate((b'abc', b'de')):
            self.engine.write_chunk(self.bucket, 'big', version_id, seq, data)
        self.assertEqual(self.engine.chunks_held(version_id), 2)
        big = self.coordinate('big', version_id=version_id, size=5, chunk_size=3)
        held = self.engine.read(self.bucket, 'big')[0]
        self.assertEqual(b''.join(self.engine.iter_value(held, 1, 3)), b'bcd')
        self.assertTrue(self.other.apply(self.bucket, 'big', held))
        self.assertEqual(self.other.read_chunk(version_id, 1), b'de')
        self.engine.write_chunk(self.bucket, 'cut-off', 'd' * 32, 0, b'an upload that died')
        self.assertEqual(self.engine.collect_chunks(2 ** 62, 1000)[0], 1)   # that one only
        self.assertEqual((self.engine.chunks_held('d' * 32), self.engine.chunks_held(big.version_id)), (0, 2))
        self.other.delete_chunks(version_id)
        self.assertEqual(self.other.chunks_held(version_id), 0)

    def test_hints_stored_read_counted_and_deleted(self):
        version = write('p3')
        self.assertTrue(self.engine.store_hint('p3', self.bucket, 'h', version))
        self.assertEqual([v.version_id for v in self.engine.read_hints(self.bucket, 'h')], [version.version_id])
        hints = [h for h in self.engine.hints_for('p3', 1000) if h[0] == self.bucket]
        self.assertEqual([(b, k, v.version_id) for b, k, v, _ in hints], [(self.bucket, 'h', version.version_id)])
        self.assertEqual(self.engine.hint_counts()['p3'][0], len(self.engine.hints_for('p3', 1000)))
        self.assertIn((self.bucket, 'h'), self.engine.hinted_keys())
        self.engine.delete_hint('p3', self.bucket, 'h', version.version_id)
        self.assertEqual(self.engine.read_hints(self.bucket, 'h'), [])

    def test_bucket_records_written_copied_and_dropped(self):
        self.assertTrue(self.engine.write_bucket(self.bucket, {'n': 3}))
        self.assertFalse(self.engine.write_bucket(self.bucket, {'n': 2}))
        self.assertEqual(self.engine.read_bucket(self.bucket), {'n': 2})
        self.assertIn(self.bucket, self.engine.bucket_names())
        properties, modified = self.engine.bucket_records()[self.bucket]
        self.assertTrue(self.other.put_bucket_record(self.bucket, properties, modified))
        self.assertFalse(self.other.put_bucket_record(self.bucket, '{}', modified))
        self.assertEqual(self.other.read_bucket(self.bucket), {'n': 2})
        version = self.coordinate('k')
        self.engine.mark_pending(self.bucket, 'k', version.version_id)
        self.engine.drop_keys(self.bucket)
        self.engine.drop_bucket(self.bucket)
        self.assertNotIn(self.bucket, self.engine.bucket_names())
        self.assertEqual([m for m in self.engine.pending_markers(10) if m[0] == self.bucket], [])

    def test_the_reconcilers_queries(self):
        items = [(self.bucket, 'k%d' % i, write('p2')) for i in range(3)]
        keys_before = self.engine.count_keys()
        self.engine.insert_many(items[:2])
        self.assertEqual(self.engine.apply_many(items[1:]), [False, True])   # k1 held already
        self.assertEqual(self.engine.count_keys(), keys_before + 3)
        found = self.engine.read_many([(b, k) for b, k, _ in items], values=False)
        self.assertEqual({k: [v.version_id for v in found[(self.bucket, k)]] for _, k, _ in items},
                         {k: [v.version_id] for _, k, v in items})
        point = key_point(self.bucket, 'k0')
        self.assertEqual(self.engine.range_digests(point, point + 1, 2)[0][0], 1)
        self.assertEqual([(b, k) for b, k, _ in self.engine.scan_points(point, point + 1)], [(self.bucket, 'k0')])
        tombstone = write('p2', held=[items[0][2]])
        tombstone.deleted, tombstone.modified = True, 1
        self.engine.apply(self.bucket, 'k0', tombstone)
        self.assertIn((1, self.bucket, 'k0', tombstone.version_id), self.engine.tombstones(2, 1000))
        self.engine.set_metadata({'job': self.bucket})
        self.assertEqual(self.engine.get_metadata(['job', 'none']), {'job': self.bucket})
        lock = self.engine.try_lock(self.bucket)
        self.assertIsNotNone(lock)
        self.assertIsNone(self.engine.try_lock(self.bucket))
        self.engine.unlock(lock)
        self.engine.unlock(self.engine.try_lock(self.bucket))
        actor = self.engine.actor
        self.assertNotEqual(self.engine.new_incarnation(), actor)


class TestQueriesOnSQLite(support.OnSQLite, QueriesSpecification, unittest.TestCase):
    reads_by_pymysql_counted = False


class TestQueriesOnMariaDB(support.OnMariaDB, QueriesSpecification, unittest.TestCase):
    reads_by_pymysql_counted = True


class TestPoolCounts(support.OnMariaDB, support.StoreSpecification, unittest.TestCase):
    """What a partition's pool reports: connections idle, and taken (by a query
    sent and not yet read, or a cursor in use)."""

    def test_connections_idle_and_in_use(self):
        engine = self.store.engines['p1']
        engine.read(self.bucket, 'k')
        idle = engine.pool.counts()['idle']
        self.assertEqual(engine.pool.counts(), {'idle': idle, 'in_use': 0})
        sent = engine.send_read(self.bucket, 'k')
        self.assertEqual(engine.pool.counts(), {'idle': idle - 1, 'in_use': 1})
        with engine._cursor():
            self.assertEqual(engine.pool.counts(), {'idle': max(idle - 2, 0), 'in_use': 2})
        engine.finish_read(sent)
        self.assertEqual(engine.pool.counts()['in_use'], 0)
        engine.abandon_query(engine.send_read(self.bucket, 'k'))
        self.assertEqual(engine.pool.counts()['in_use'], 0)


class TestCoordinatedWriteOnMariaDB(support.OnMariaDB, support.StoreSpecification, unittest.TestCase):
    """A coordinated write (a PUT's decision) in two round trips: the key's
    user lock, the bucket's fence and clock and the locking read in one, the
    rows and the commit in the other; and still dated after a bucket fence."""

    def coordinate(self, engine, key, **fields):
        return engine.coordinate(self.bucket, key, lambda held: Version.new(
            {}, (engine.actor, len(held) + 1), b'v', 'text/plain', **fields))

    def round_trips(self, write):
        return support.sent_queries(write)

    def test_a_new_key_and_an_overwrite_take_two_round_trips(self):
        engine = self.store.engines['p1']
        self.coordinate(engine, 'warm')   # the pool's connection opened
        writes = [{}, {'stage': (0, False)}, {'idempotency': ('retry-1', 'fingerprint', 60)}]   # plain, conditional, retried
        for extra in writes:
            sent = self.round_trips(lambda: engine.coordinate(self.bucket, 'k', lambda held: Version.new(
                {}, (engine.actor, len(held) + 1), b'v', 'text/plain'), **extra))
            self.assertEqual(len(sent), 2, sent)
            self.assertNotIn('ISOLATION', ' '.join(sent))   # the session's, set once per connection
        self.assertEqual(len(engine.read(self.bucket, 'k')), len(writes))   # blind writes: siblings

    def test_a_version_is_dated_after_the_bucket_fence(self):
        engine = self.store.engines['p1']
        fence = time.time_ns() // 1000 + 60 * 10 ** 6   # a front end whose clock is a minute behind
        engine.drop_keys(self.bucket, fence)
        _, version = self.coordinate(engine, 'k')
        self.assertEqual(version.modified, fence + 1)
        self.assertEqual([v.version_id for v in engine.read(self.bucket, 'k')], [version.version_id])
        _, tombstone = self.coordinate(engine, 'gone', deleted=True)
        self.assertGreaterEqual(tombstone.modified, fence + 1)


class TestApplyOnSQLite(support.OnSQLite, ApplySpecification, unittest.TestCase):
    pass


class TestApplyOnMariaDB(support.OnMariaDB, ApplySpecification, unittest.TestCase):
    pass


class TestApplyInHalvesOnMariaDB(support.OnMariaDB, ApplySpecification, unittest.TestCase):
    halves = True


class TestNeighbouringNewKeysOnMariaDB(support.OnMariaDB, support.StoreSpecification, unittest.TestCase):
    """Many writers of neighbouring new keys at once, through the coordinator
    and the replicas: InnoDB never has to break a deadlock (each one a
    transaction retried with backoff), and every write lands."""
    writers, keys_each = 24, 12

    @staticmethod
    def deadlocks():
        from test.mariadb import shared_cluster
        total = 0
        for server in shared_cluster().servers:
            conn = server.connect(autocommit=True)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
                    total += int(cursor.fetchone()[1])
            finally:
                conn.close()
        return total

    def test_writers_of_neighbouring_new_keys_never_deadlock(self):
        keys = ['k%05d' % i for i in range(self.writers * self.keys_each)]
        errors, start = [], threading.Barrier(self.writers)

        def writer(mine):
            try:
                start.wait()
                for key in mine:
                    self.store.put(self.bucket, key, key.encode(), 'text/plain')
            except Exception:
                errors.append(traceback.format_exc())

        before = self.deadlocks()
        threads = [threading.Thread(target=writer, args=(keys[i::self.writers],)) for i in range(self.writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(self.deadlocks() - before, 0)
        for key in keys:
            self.assertEqual([v.value for v in self.store.get(self.bucket, key).current], [key.encode()])


class TestCoalescedReplicaWritesOnMariaDB(support.OnMariaDB, support.StoreSpecification, unittest.TestCase):
    """Replica writes a front end sends a partition while one of its writes
    there is under way wait, and go together: one transaction, one commit."""

    def setUp(self):
        super().setUp()
        self.engine = self.store.engines['p1']

    def commits(self):
        params = self.engine.params
        conn = pymysql.connect(host=params['host'], port=params['port'], user=params['user'],
                               password=params['password'], autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'Com_commit'")
                return int(cursor.fetchone()[1])
        finally:
            conn.close()

    def holds(self, key):
        return sorted(v.version_id for v in self.engine.read(self.bucket, key))

    def test_writes_sent_while_one_is_under_way_commit_together(self):
        versions = {key: write('p2') for key in ('k1', 'k2', 'k3')}
        before = self.commits()
        sent = {key: self.engine.send_apply(self.bucket, key, version, []) for key, version in versions.items()}
        # The last one's answer is read first: it reads the first batch's on the way.
        self.assertTrue(self.engine.finish_apply(sent['k3']))
        self.assertTrue(self.engine.finish_apply(sent['k1']))
        self.assertTrue(self.engine.finish_apply(sent['k2']))
        self.assertEqual(self.commits() - before, 2)   # k1 alone, then k2 and k3 together
        for key, version in versions.items():
            self.assertEqual(self.holds(key), [version.version_id])

    def test_large_values_go_one_batch_each(self):
        from kvstore.engines.coalescing import MAX_BATCH_BYTES
        large = {key: Version.new({}, ('p2', i + 1), b'v' * (MAX_BATCH_BYTES // 2 + 1), 'text/plain')
                 for i, key in enumerate(('l1', 'l2', 'l3'))}
        before = self.commits()
        sent = [self.engine.send_apply(self.bucket, key, version, []) for key, version in large.items()]
        self.assertEqual([self.engine.finish_apply(s) for s in reversed(sent)], [True, True, True])
        self.assertEqual(self.commits() - before, 3)
        for key, version in large.items():
            self.assertEqual(self.holds(key), [version.version_id])

    def test_a_write_abandoned_before_it_went_is_not_sent(self):
        first, second = write('p2'), write('p2')
        sent = self.engine.send_apply(self.bucket, 'first', first, [])
        waiting = self.engine.send_apply(self.bucket, 'second', second, [])
        self.engine.abandon_query(waiting)
        self.assertTrue(self.engine.finish_apply(sent))
        self.assertEqual(self.holds('first'), [first.version_id])
        self.assertEqual(self.holds('second'), [])
        third = write('p2')
        self.assertTrue(self.engine.finish_apply(self.engine.send_apply(self.bucket, 'third', third, [])))
        self.assertEqual(self.holds('third'), [third.version_id])

    def test_writes_of_one_key_in_one_batch_keep_what_neither_supersedes(self):
        old = write('p2')
        self.engine.apply(self.bucket, 'k', old)
        new = write('p2', held=[old])
        sibling = write('p3')
        first = self.engine.send_apply(self.bucket, 'other', write('p2'), [])
        sent = [self.engine.send_apply(self.bucket, 'k', new, [old.version_id]),
                self.engine.send_apply(self.bucket, 'k', sibling, [])]
        self.assertEqual([self.engine.finish_apply(s) for s in [first] + sent], [True, True, True])
        self.assertEqual(self.holds('k'), sorted([new.version_id, sibling.version_id]))
