"""The benchmark (bench/) kept from rotting: its command runs one short row
end to end, and its loader still writes the rows the store writes.

Nothing here times anything; bench/run.py only reports.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from test.support import config_text, mariadb_partitions, open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_FIELDS = {'name', 'system', 'what', 'connections', 'seconds', 'requests', 'rps', 'p50_ms', 'p99_ms',
              'p999_ms', 'mean_ms', 'max_ms', 'errors', 'statuses', 'socket_errors', 'server_ms', 'db_ms',
              'cpu_ms_per_req', 'server_ms_per_req', 'db_ms_per_req', 'wrk_cpu_pct', 'machine_cores',
              'other_cores', 'attempt', 'bytes', 'split', 'deadlocks', 'statements_per_req', 'commits_per_req',
              'fsyncs_per_req',
              'disturbed', 'one_worker', 'etcd', 'measured', 'commit', 'per_request', 'versus'}


@unittest.skipUnless(shutil.which('wrk'), 'wrk not installed (Debian: apt-get install wrk)')
class TestBenchCommand(unittest.TestCase):
    """bench/run.py as `make bench` runs it, on the hello world row for a second."""

    def setUp(self):
        self.results = tempfile.mkdtemp(prefix='kvstore-test-bench-')
        self.addCleanup(shutil.rmtree, self.results, True)

    def test_a_row_runs_and_is_reported(self):
        command = [sys.executable, os.path.join(ROOT, 'bench', 'run.py'), '--only', 'hello', '--duration', '1',
                   '--warmup', '0', '--retries', '0', '--quiet-wait', '0', '--workers', '2', '--threads', '2',
                   '--connections', '4', '--results-dir', self.results]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(os.path.join(self.results, 'results.json')) as f:
            results = json.load(f)
        self.assertEqual(list(results), ['facts', 'settings', 'results', 'profile'])
        [row] = results['results']
        self.assertEqual(set(row), ROW_FIELDS)
        self.assertEqual((row['name'], row['system'], row['errors']), ('hello', 'hello', 0))
        self.assertGreater(row['requests'], 0)
        self.assertGreater(row['server_ms'], 0)
        with open(os.path.join(self.results, 'results.md')) as f:
            self.assertIn('\n| hello', f.read())


class TestBulkLoad(unittest.TestCase):
    """The loader writes the rows a PUT of a new key leaves (it checks one key
    against Datastore.put itself and raises if they differ)."""

    def test_loaded_keys_read_as_the_store_wrote_them(self):
        from bench.workloads import bulk_load, key_name, make_filler, value_for
        from test.mariadb import shared_cluster

        partitions = mariadb_partitions(shared_cluster())
        directory = tempfile.mkdtemp(prefix='kvstore-test-bench-')
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, 'store.cfg')
        with open(path, 'w') as f:
            f.write(config_text(partitions))
        bulk_load(path, 'bench', 200, 1024)
        store = open_store(partitions)
        self.addCleanup(store.close)
        filler = make_filler(200, 1024)
        for index in (0, 77, 199):
            [version] = store.get('bench', key_name(index), r=3).current
            self.assertEqual(version.value, value_for(index, 1024, filler))
            owner = store.placement('bench', key_name(index))[0][0]
            self.assertEqual(version.dot[0], store.engines[owner].actor)
