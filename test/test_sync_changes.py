"""The reconciler follows the changes (issue #27): a run over a store nobody
wrote to digests nothing and reads nothing; a run after K writes reads about
K keys; the full pass, every full_pass_interval or with --full, still finds
what no write announced.  Real MariaDB partitions; an older partition gets
its change sequence in place."""
import pymysql

import sync

from kvstore.coordinator.versions import Version, context_of
from kvstore.engines import MySQLEngine
from test.sync_support import SyncCase, bulk_load, config_of, holdings, sync_once
from test.test_schema import table_statements as first_release_tables


class TestFollowingChanges(SyncCase):
    def test_a_run_after_no_writes_reads_nothing_and_one_after_k_writes_reads_about_k(self):
        keys = ['c%04d' % i for i in range(2000)]
        bulk_load(self.store, self.bucket, keys)
        results, meter, status = sync_once(self.config)   # the first run: a full pass
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertGreaterEqual(meter.rows_digested, 3 * len(keys))

        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual((meter.rows_digested, meter.rows_read, meter.rows_written), (0, 0, 0),
                         results['repair'].summary)

        # Ten keys written on their coordinator alone (its replicas never got
        # them, and no marker says so): only the changes tell.
        changed = keys[:10]
        for key in changed:
            owner = self.store.ring.preference_list(self.bucket, key, 3)[0]
            engine = self.store.engines[owner]
            engine.apply(self.bucket, key, Version.new(context_of(engine.read(self.bucket, key)), (owner, 2),
                                                       b'newer', 'text/plain'))
        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual(meter.rows_digested, 0)
        self.assertEqual(results['repair'].counts['keys_repaired'], len(changed))
        # the changes, each key's versions on its owners, the values copied:
        # about 16 rows a key, whatever the store holds (6,000 rows here)
        self.assertLess(meter.rows_read, 20 * len(changed))
        held = holdings(self.store)
        for key in changed:
            self.assertEqual(len(held[(self.bucket, key)]), 3, key)
            self.assertEqual([v.value for v in self.store.get(self.bucket, key, r=3).current], [b'newer'])

    def test_what_no_write_announced_waits_for_the_full_pass(self):
        keys = ['r%03d' % i for i in range(300)]
        bulk_load(self.store, self.bucket, keys)
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)
        # A replica loses a row behind the store's back (a DELETE is no change).
        key = keys[7]
        owner = self.store.ring.preference_list(self.bucket, key, 3)[1]
        version = self.store.engines[owner].read(self.bucket, key)[0]
        self.store.engines[owner].delete_versions(self.bucket, key, [version.version_id])
        results, meter, status = sync_once(self.config)
        self.assertEqual((status, meter.rows_digested), (sync.CONVERGED, 0))
        self.assertEqual(self.store.engines[owner].read(self.bucket, key), [])
        results, meter, status = sync_once(self.config, full=True)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual(results['repair'].counts['keys_repaired'], 1)
        self.assertEqual([v.version_id for v in self.store.engines[owner].read(self.bucket, key)],
                         [version.version_id])
        # full_pass_interval = 0: every run is a full pass, as before.
        self.store.engines[owner].delete_versions(self.bucket, key, [version.version_id])
        results, meter, status = sync_once(config_of(self.partitions, {'sync_full_pass_interval': 0}))
        self.assertEqual(results['repair'].counts['keys_repaired'], 1)

    def test_a_key_written_to_a_partition_that_does_not_own_it_is_moved_to_its_owners(self):
        keys = ['m%03d' % i for i in range(100)]
        bulk_load(self.store, self.bucket, keys)
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)
        stray = 'stray'
        owners = self.store.ring.preference_list(self.bucket, stray, 3)
        stranger = next(p for p in sorted(self.store.engines) if p not in owners)
        self.store.engines[stranger].apply(self.bucket, stray, Version.new({}, (stranger, 1), b's', 'text/plain'))
        results, meter, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED, {r.name: r.summary for r in results.values()})
        self.assertEqual(meter.rows_digested, 0)
        self.assertConverged(self.store, keys + [stray])


class TestChangeSequenceUpgrade(SyncCase):
    def test_a_partition_created_before_the_change_sequence_gets_it_in_place(self):
        fields = self.partitions['p1']
        # As root: the store's documented user may not drop databases.
        connection = pymysql.connect(host=fields['host'], port=fields['port'], user='root', password='')
        try:
            with connection.cursor() as cursor:
                database = 'test_' + fields['database'] + '_old'
                cursor.execute('CREATE DATABASE ' + database)
                cursor.execute('USE ' + database)
                for statement in first_release_tables():   # the tables as an older version made them
                    cursor.execute(statement)
                for i in range(3):
                    cursor.execute("INSERT INTO objects VALUES (%s, %s, %s, '{}', 0, 'text/plain', '', 0, 'v',"
                                   " 1, 0, '{}', %s)", (b'b', b'k%d' % i, b'id%d' % i, i))
            connection.commit()
            engine = MySQLEngine('p1', fields['host'], fields['port'], fields['user'], fields['password'],
                                 database, 1.0, 2.0)
            try:
                old = engine.changes(0, 10)
                self.assertEqual(sorted(k for _, _, k in old), ['k0', 'k1', 'k2'])
                self.assertEqual(len({seq for seq, _, _ in old}), 3)
                engine.apply('b', 'new', Version.new({}, ('p1', 1), b'n', 'text/plain'))
                self.assertEqual(engine.changes(max(seq for seq, _, _ in old), 10)[0][2], 'new')
                self.assertEqual(engine.last_change(), engine.changes(0, 10)[-1][0])
            finally:
                engine.close()
        finally:
            with connection.cursor() as cursor:
                cursor.execute('DROP DATABASE IF EXISTS ' + database)
            connection.close()
