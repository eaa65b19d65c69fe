"""sync.py as it is installed: the line of crontab.example run as cron runs it,
configurations it must refuse, dry runs, and each job's last result recorded
in the partitions (kvstore/coordinator/sync_runs.py).  Real MariaDB partitions
from the shared cluster, sync.py run as a command."""
import configparser
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import sync
from kvstore.coordinator.versions import Version
from kvstore.coordinator.sync_runs import last_runs
from test import support
from test.sync_support import HERE, SyncCase, config_of, holdings, run_command, sync_once, write_config

CRONTAB = os.path.join(HERE, 'crontab.example')
UNITS = [os.path.join(HERE, 'deploy', 'kvstore-sync.' + kind) for kind in ('service', 'timer')]
INSTALL_PATH, CONFIG_PATH = '/opt/kvstore', '/etc/kvstore/configuration.cfg'   # as crontab.example documents
LOG_LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S')


def cron_command():
    """The command of crontab.example's one entry (after its five schedule fields)."""
    entries = [line for line in open(CRONTAB).read().splitlines() if line.strip() and not line.startswith('#')]
    assert len(entries) == 1, entries
    return entries[0].split(None, 5)[5]


def install(directory):
    """An installed checkout in directory: this one's files, and .venv the
    virtualenv running the tests."""
    os.mkdir(directory)
    for name in os.listdir(HERE):
        if name not in ('.git', '.venv', 'log', 'data'):
            os.symlink(os.path.join(HERE, name), os.path.join(directory, name))
    if sys.prefix != sys.base_prefix:
        os.symlink(sys.prefix, os.path.join(directory, '.venv'))
    else:
        os.makedirs(os.path.join(directory, '.venv', 'bin'))
        os.symlink(sys.executable, os.path.join(directory, '.venv', 'bin', 'python'))
    return directory


class TestCronLine(SyncCase):
    def diverge(self, keys):
        """Keys on all their owners, then a newer version of each written on one
        owner only (a write whose other replicas failed): the values expected."""
        written = self.put_all(keys, w=3)
        for key in keys:
            owner = self.store.ring.preference_list(self.bucket, key, 3)[0]
            newer = Version.new(written[key].full_clock, (owner, 2), b'newer ' + key.encode(), 'text/plain')
            self.store.engines[owner].apply(self.bucket, key, newer)
        return {key: b'newer ' + key.encode() for key in keys}

    def test_the_crontab_line_as_written_reconciles_a_diverged_cluster_and_logs_with_times(self):
        keys = ['cron-%d' % i for i in range(30)]
        values = self.diverge(keys)
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        installed = install(os.path.join(directory.path, 'kvstore'))
        config = write_config(os.path.join(directory.path, 'configuration.cfg'), self.partitions)
        command = cron_command().replace(CONFIG_PATH, config).replace(INSTALL_PATH, installed)
        # cron's environment: its PATH, the user's HOME and LOGNAME (WEBPY_ENV=test: the test databases)
        env = {'PATH': '/usr/bin:/bin', 'HOME': directory.path, 'LOGNAME': getpass.getuser(),
               'SHELL': '/bin/sh', 'WEBPY_ENV': 'test'}
        done = subprocess.run(['/bin/sh', '-c', command], env=env, cwd=directory.path,
                              capture_output=True, text=True, timeout=120)
        log_path = os.path.join(installed, 'log', 'sync.log')
        logged = open(log_path).read() if os.path.exists(log_path) else ''
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr + logged)
        lines = logged.splitlines()
        self.assertEqual([line for line in lines if not LOG_LINE.match(line)], [])
        self.assertEqual([line.split(' ', 1)[1].split(':')[0] for line in lines], list(sync.JOBS) + ['sync'])
        self.assertIn(' repair: ', lines[2])
        self.assertIn('%d keys repaired' % len(keys), lines[2])
        self.assertIn('sync: converged', lines[-1])
        self.assertConverged(self.store, keys, values)
        # The next run appends to the log and finds nothing to do.
        again = subprocess.run(['/bin/sh', '-c', command], env=env, cwd=directory.path, timeout=120)
        self.assertEqual(again.returncode, sync.CONVERGED)
        lines = open(log_path).read().splitlines()
        self.assertEqual(len(lines), 2 * len(sync.JOBS) + 2)
        self.assertIn(', 0 repaired', lines[-3])   # it follows the changes: nothing repaired

    def test_a_configuration_no_partition_of_which_can_be_reached_is_refused(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        absent = support.sqlite_partitions(os.path.join(directory.path, 'data'))   # files never created
        os.mkdir(os.path.join(directory.path, 'data'))
        nobody = support.free_port()
        dead = {name: dict(fields, port=nobody) for name, fields in self.partitions.items()}
        for partitions in (absent, dead):
            path = write_config(os.path.join(directory.path, 'sync.cfg'), partitions)
            done = run_command(path)
            self.assertEqual(done.returncode, sync.ERROR, done.stdout + done.stderr)
            self.assertIn('no partition of %s can be reached' % path, done.stderr)
            self.assertIn('p1: ', done.stderr)
            self.assertNotIn('converged', done.stdout)
        self.assertEqual(os.listdir(os.path.join(directory.path, 'data')), [])   # nothing created


class TestSystemdUnits(SyncCase):
    def test_the_service_as_written_runs_sync_and_the_units_verify(self):
        directory = support.TemporaryDirectory()
        self.addCleanup(directory.remove)
        installed = install(os.path.join(directory.path, 'kvstore'))
        config = write_config(os.path.join(directory.path, 'configuration.cfg'), self.partitions)
        units = []
        for path in UNITS:
            units.append(os.path.join(directory.path, os.path.basename(path)))
            with open(path) as f, open(units[-1], 'w') as out:
                out.write(f.read().replace(CONFIG_PATH, config).replace(INSTALL_PATH, installed))
        if shutil.which('systemd-analyze'):
            checked = subprocess.run(['systemd-analyze', 'verify', '--man=no'] + units,
                                     capture_output=True, text=True, timeout=60)
            self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, ''))
        service = configparser.ConfigParser(interpolation=None)
        service.read(units[0])
        self.assertEqual(service['Service']['SuccessExitStatus'], '1')   # work left is not a failure
        self.put_all(['unit-%d' % i for i in range(20)], w=3)
        self.store.engines['p1'].drop_keys(self.bucket)
        done = subprocess.run(shlex.split(service['Service']['ExecStart']), cwd=service['Service']['WorkingDirectory'],
                              env={'PATH': '/usr/bin:/bin', 'WEBPY_ENV': 'test'},
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, sync.CONVERGED, done.stdout + done.stderr)
        lines = done.stdout.splitlines()
        self.assertEqual([line for line in lines if not LOG_LINE.match(line)], [])
        self.assertIn('sync: converged', lines[-1])
        self.assertConverged(self.store, ['unit-%d' % i for i in range(20)])


class TestDryRunWords(SyncCase):
    def test_a_dry_run_says_what_it_would_write_and_writes_nothing(self):
        keys = ['dry-%d' % i for i in range(40)]
        written = self.put_all(keys, w=3)
        self.store.engines['p2'].drop_keys(self.bucket)   # a replica lost
        for key in keys[:5]:   # rows on a partition that does not own the key (a stale front end's)
            stranger = next(p for p in sorted(self.store.engines)
                            if p not in self.store.ring.preference_list(self.bucket, key, 3))
            self.store.engines[stranger].apply(self.bucket, key, written[key])
        before = holdings(self.store)
        path = write_config(os.path.join(support.TemporaryDirectory().path, 'sync.cfg'), self.partitions)
        for job in ('rebalance', 'all'):
            done = run_command(path, *(['--dry-run'] if job == 'all' else [job, '--dry-run']))
            self.assertEqual(done.returncode, sync.WORK_LEFT, done.stdout + done.stderr)
            self.assertNotRegex(done.stdout, r'written|moved|copied|repaired|reaped|pushed|delivered')
            self.assertRegex(done.stdout, r'rebalance: .*would move 5 keys to their owners')
            self.assertRegex(done.stdout, r'sync: work left \(dry run\) .*would write \d+')
        self.assertRegex(done.stdout, r'repair: .*would repair \d+ keys')
        self.assertEqual(holdings(self.store), before)
        self.assertEqual(last_runs(self.store), {})   # a dry run records nothing either


class TestLastRuns(SyncCase):
    def test_each_jobs_last_run_is_recorded_in_the_partitions_and_read_back_newest_first(self):
        self.put_all(['last-%d' % i for i in range(10)], w=3)
        self.store.engines['p3'].drop_keys(self.bucket)
        started = time.time()
        results, _, status = sync_once(self.config)
        self.assertEqual(status, sync.CONVERGED)
        runs = last_runs(self.store)
        self.assertEqual(sorted(runs), sorted(sync.JOBS))
        repair = runs['repair']
        self.assertTrue(repair['ok'])
        self.assertFalse(repair['work_left'])
        self.assertGreaterEqual(repair['timestamp'], started - 1)
        self.assertLessEqual(repair['timestamp'], time.time())
        self.assertEqual(repair['counts']['keys_repaired'], results['repair'].counts['keys_repaired'])
        self.assertGreater(repair['counts']['keys_repaired'], 0)
        self.assertIn('delivered', runs['hints']['counts'])
        stored = {name: json.loads(engine.get_metadata(['sync.last.repair'])['sync.last.repair'])
                  for name, engine in self.store.engines.items()}
        self.assertEqual(set(r['timestamp'] for r in stored.values()), {repair['timestamp']})
        # A run that cannot act (p4 of the recorded ring is missing from the
        # configuration) records its jobs as failed on the partitions it
        # has; p4 keeps the older record, and the newest wins.
        three = {name: fields for name, fields in self.partitions.items() if name != 'p4'}
        results, _, status = sync_once(config_of(three))
        self.assertEqual(status, sync.ERROR)
        runs = last_runs(self.store)
        self.assertEqual({job: run['ok'] for job, run in runs.items()}, {job: False for job in sync.JOBS})
        self.assertIn('p4', runs['gc']['error'])
        self.assertGreater(runs['gc']['timestamp'], repair['timestamp'])
        p4 = json.loads(self.store.engines['p4'].get_metadata(['sync.last.gc'])['sync.last.gc'])
        self.assertTrue(p4['ok'])
