"""sync.py run as a command as cron runs it, on real MariaDB partitions: killed
mid-run, and twice at once."""
import json
import os
import signal
import time

import sync

from test import support
from test.sync_support import SyncCase, bulk_load, run_command, write_config


class TestSyncRuns(SyncCase):
    """sync.py as cron runs it: killed, and twice at once."""

    def wipe_a_replica(self, count):
        keys = ['w%d' % i for i in range(count)]
        bulk_load(self.store, self.bucket, keys)
        self.store.engines['p3'].drop_keys(self.bucket)
        return keys

    def test_killed_with_sigkill_mid_run_the_next_run_converges(self):
        keys = self.wipe_a_replica(3000)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions,
                            {'rate_limit': 400, 'batch_size': 100})
        running = run_command(path, 'repair', wait=False)
        on_p3 = lambda: self.store.engines['p3'].count_keys()   # noqa: E731
        deadline = time.monotonic() + 30
        while on_p3() < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(running.pid, signal.SIGKILL)
        self.assertEqual(running.wait(), -signal.SIGKILL)
        running.stdout.close()
        running.stderr.close()
        copied = on_p3()
        expected = sum(1 for k in keys if 'p3' in self.store.ring.preference_list(self.bucket, k, 3))
        self.assertTrue(100 <= copied < expected, (copied, expected))
        done = run_command(write_config(path, self.partitions))
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr)
        self.assertEqual(on_p3(), expected)
        self.assertConverged(self.store, keys)   # one version per replica: nothing duplicated

    def test_a_second_run_while_one_holds_the_lock_skips_and_exits_0(self):
        self.wipe_a_replica(2000)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions,
                            {'rate_limit': 1000, 'batch_size': 100})
        first = run_command(path, wait=False)
        server, database = self.cluster.servers[0], self.config.partitions[0].database
        with server.connect() as conn, conn.cursor() as cursor:
            def locked():
                cursor.execute('SELECT IS_USED_LOCK(%s)', ('%s.sync' % database,))
                return cursor.fetchone()[0] is not None
            deadline = time.monotonic() + 20
            while not locked() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(locked())
            second = run_command(path, '--json')
            third = run_command(path)
            self.assertIsNone(first.poll())   # the first is still at work
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(json.loads(second.stdout)['status'], 'skipped')
        self.assertEqual(third.returncode, 0)
        self.assertIn('skipping', third.stdout)
        out, err = first.communicate(timeout=120)
        self.assertEqual(first.returncode, sync.CONVERGED, out + err)
