"""docs/OPERATIONS.md's procedures, step by step, with the tools it names: the
real server (serve.py) over four MariaDB partitions, reloaded with SIGHUP,
mariadb-dump and the mariadb client, and sync.py run as a command.

Backup and restore: p2 is backed up; writes, overwrites and deletes go on;
p2's database is then lost and restored from the backup, which misses them.
After the documented steps every acknowledged write reads back, p2 holds
exactly what the other owners of each of its keys hold, and writes it
coordinates afterwards are not lost.

Adding and removing a partition: p5 joins the ring while the store serves,
then p1 leaves it through weight 0; every acknowledged write reads back
throughout, and the reconciler reports each epoch complete.
"""
import json
import os
import re
import signal
import subprocess
import sys
import unittest
import urllib.parse

from kvstore.coordinator.ring import RING_SIZE
from test import support
from test.mariadb import shared_cluster
from test.server import REPO, StoreServer
from test.sync_support import holdings

CHECK_CONFIGURATION = 'from kvstore import configuration; configuration.load()'

BUCKET = 'ops'
RESTORED = 'p2'


class Procedures(unittest.TestCase):

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.server = StoreServer(support.config_text(self.partitions), workers=1)
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.open_store()
        self.mariadb = self.cluster.servers[int(RESTORED[1:]) - 1]
        self.expected = {}   # key -> the value of its last acknowledged write; None: deleted

    def open_store(self):
        """The operator's view of the partitions: placement, and what each holds."""
        self.store = support.open_store(self.partitions)
        self.addCleanup(self.store.close)
        self.engine = self.store.engines[RESTORED]

    def request(self, method, key, body=None):
        conn = self.server.connect()
        try:
            headers = {'Content-Type': 'text/plain'} if body is not None else {}
            conn.request(method, '/buckets/%s/keys/%s' % (BUCKET, urllib.parse.quote(key)), body, headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def write(self, key, value):
        status, body = self.request('PUT', key, value)
        self.assertIn(status, (200, 201), body)
        self.expected[key] = value

    def delete(self, key):
        status, body = self.request('DELETE', key)
        self.assertEqual(status, 200, body)
        self.expected[key] = None

    def client(self, program, *args, **options):
        """A MariaDB client program, run as OPERATIONS.md runs it, against p2's server."""
        server = self.mariadb
        return subprocess.run([program, '-h', server.host, '-P', str(server.port), '-u', server.user]
                              + list(args), check=True, timeout=60, capture_output=True, **options)

    def sync(self, *args):
        environment = dict(os.environ, STORE_CONFIG=self.server.config_path)
        return subprocess.run([sys.executable, os.path.join(REPO, 'sync.py')] + list(args),
                              cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)

    def test_a_partition_restored_from_a_dump_is_brought_up_to_date(self):
        for i in range(30):
            self.write('k%02d' % i, b'before the backup %d' % i)
        # The backup: one consistent snapshot of p2's database.
        dump = self.client('mariadb-dump', '--single-transaction', '--databases', self.engine.database).stdout
        old_actor = self.engine.actor
        for i in range(0, 10):
            self.write('k%02d' % i, b'after the backup %d' % i)
        for i in range(10, 20):
            self.delete('k%02d' % i)
        for i in range(30, 40):
            self.write('k%02d' % i, b'new after the backup %d' % i)
        # p2's disk is lost.  Stop the front ends, restore, new incarnation.
        self.server.stop()
        self.store.close()
        self.client('mariadb', '-e', 'DROP DATABASE `%s`' % self.engine.database)
        self.client('mariadb', input=dump)
        minted = self.sync('new-incarnation', RESTORED)
        self.assertEqual(minted.returncode, 0, minted.stderr)
        new_actor = re.search(r'now writes as (\S+);', minted.stdout).group(1)
        self.assertNotEqual(new_actor, old_actor)
        self.assertEqual(new_actor.split('.')[0], RESTORED)
        self.server.start()
        self.open_store()
        # What the restore missed: every key of p2's changed since the backup.
        changed = {'k%02d' % i for i in list(range(20)) + list(range(30, 40))}
        owned = {k for k in changed if RESTORED in self.store.placement(BUCKET, k)[0]}
        self.assertTrue(owned)
        self.assertLessEqual(owned, set(self.differences()))
        run = self.sync()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertRegex(run.stdout, r'repair: \d+ lazy writes pushed, \d+ ranges compared, [1-9]\d* differed, '
                                     r'[1-9]\d* keys repaired')
        self.assertEqual(self.differences(), {})
        self.assert_acknowledged_writes_read_back()
        # Writes p2 coordinates from now on (as its new incarnation) are kept.
        coordinated = [k for k in sorted(self.expected) if self.store.placement(BUCKET, k)[0][0] == RESTORED]
        self.assertTrue(coordinated)
        for key in coordinated:
            self.write(key, b'after the restore')
        run = self.sync()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(self.differences(), {})
        self.assert_acknowledged_writes_read_back()
        writers = {version.dot[0] for version in self.versions_on_p2()}
        self.assertIn(new_actor, writers)

    def test_a_partition_added_and_another_removed_through_weight_0(self):
        run = self.sync()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)   # epoch 1: the ring before
        for i in range(40):
            self.write('k%02d' % i, b'value %d' % i)
        # p5 shares p1's server, in a database of its own.
        p5 = dict(self.partitions['p1'], database=self.partitions['p1']['database'] + '_p5')
        grown = dict(self.partitions, p5=p5)
        self.reconfigure(grown)
        for i in range(40, 50):
            self.write('k%02d' % i, b'value %d' % i)
        self.assert_acknowledged_writes_read_back()
        self.sync_until_complete(2)
        self.assertTrue(self.keys_on('p5'))
        self.assert_acknowledged_writes_read_back()

        # Dropping p1's section at once is refused: its keys would lose a replica.
        remaining = {name: fields for name, fields in grown.items() if name != 'p1'}
        self.write_configuration(remaining)
        run = self.sync()
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.reconfigure(dict(grown, p1=dict(grown['p1'], weight=0)))
        self.write('k50', b'value 50')
        self.sync_until_complete(3)
        self.assertEqual(self.keys_on('p1'), [])
        self.assert_acknowledged_writes_read_back()
        self.reconfigure(remaining)
        run = self.sync()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn('rebalance: epoch 3 complete', run.stdout)   # the same ring: nothing moves
        self.assert_acknowledged_writes_read_back()
        self.assertEqual(self.cluster_document()['rebalance']['configuration_matches'], True)

    def write_configuration(self, partitions):
        with open(self.server.config_path, 'w') as f:
            f.write(support.config_text(partitions))

    def reconfigure(self, partitions):
        """Every front end (here one) and sync.py get the new file; the front
        end checks it and reloads on SIGHUP."""
        self.write_configuration(partitions)
        check = subprocess.run([sys.executable, '-c', CHECK_CONFIGURATION], cwd=REPO, capture_output=True,
                               env=dict(os.environ, STORE_CONFIG=self.server.config_path), timeout=30)
        self.assertEqual((check.returncode, check.stdout, check.stderr), (0, b'', b''))
        os.kill(self.server.process.pid, signal.SIGHUP)
        wanted = {name: float(fields.get('weight', 1.0)) for name, fields in partitions.items()}
        self.assertTrue(support.wait_until(lambda: self.weights() == wanted, 30), self.server.log())
        self.open_store_with(partitions)

    def weights(self):
        try:
            return {p['name']: p['weight'] for p in self.cluster_document()['partitions']}
        except (OSError, ValueError, KeyError):
            return None

    def cluster_document(self):
        conn = self.server.connect()
        try:
            conn.request('GET', '/cluster')
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def open_store_with(self, partitions):
        self.store.close()
        self.store = support.open_store(partitions)
        self.addCleanup(self.store.close)

    def sync_until_complete(self, epoch):
        for _ in range(5):
            run = self.sync()
            if run.returncode == 0:
                break
            self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn('rebalance: epoch %d complete' % epoch, run.stdout)

    def keys_on(self, partition):
        return sorted(k for (b, k), held in holdings(self.store).items() if b == BUCKET and partition in held)

    def versions_on_p2(self):
        return [version for bucket, _, version in self.engine.scan_points(0, RING_SIZE) if bucket == BUCKET]

    def differences(self):
        """{key: {partition: version ids}} for p2's keys where p2 holds other
        versions than the key's other owners."""
        found = {}
        for (bucket, key), held in holdings(self.store).items():
            owners = self.store.placement(bucket, key)[0]
            if bucket == BUCKET and RESTORED in owners and len({tuple(held.get(o, ())) for o in owners}) > 1:
                found[key] = held
        return found

    def assert_acknowledged_writes_read_back(self):
        for key, value in sorted(self.expected.items()):
            status, body = self.request('GET', key)
            if value is None:
                self.assertEqual(status, 404, '%s was deleted: %s' % (key, body))
            else:
                self.assertEqual((status, body), (200, value), key)


if __name__ == '__main__':
    unittest.main()
