#!/usr/bin/env python3
"""The store's benchmark (issue 6, "Build the measurement first").

One run starts everything it measures, on this machine only (loopback):

  * four private mariadbd servers (test/mariadb.py), a temporary
    configuration with them as partitions (N=3, R=2, W=2), and the store
    under uWSGI exactly as `make run` serves it (python serve.py, with BIND,
    WORKERS, THREADS and STORE_CONFIG), or under gunicorn gthread
    (--server gunicorn, bench/gunicorn.conf.py) for comparison;
  * a data set written straight through the engine layer, the very rows
    the store writes (see bulk_load);
  * wrk (one thread, pinned to one CPU, its own CPU time measured) with the
    Lua scripts of bench/lua: YCSB workloads C, B, A and write-only with
    zipfian keys (theta 0.99) over 1 KiB values, at r/w = one and quorum;
    1 MiB values; listing pages;
  * the references: a web.py hello world under the same server settings
    (the ceiling), a PyMySQL primary-key SELECT loop against one server (the
    database's own cost) and etcd (one node, its HTTP/JSON gateway; what a
    user would otherwise pick), with the same keys, values and key law.

For each row it reports throughput, latency percentiles, errors (non-2xx),
and the CPU milliseconds per request spent by the server and the databases,
read from /proc/<pid>/stat before and after the row: on a two-core machine
that is steadier than requests per second.  Results go to
bench/results/results.md and throughput.png (--scaling: scaling.md and
scaling.png).

Everything started is stopped and every temporary file removed at the end,
on errors and on Ctrl-C or SIGTERM too; a run that was SIGKILLed is cleaned
up by the next one.

    make bench                                 # installs what it needs, then runs
    .venv/bin/python bench/run.py --quick      # 2 s rows: a smoke run
    .venv/bin/python bench/run.py --only 'C-*,etcd-C'
    .venv/bin/python bench/run.py --scaling    # GET r=1: 10k/1M keys, 2/4/8 partitions
"""
import argparse
import base64
import configparser
import contextlib
import dataclasses
import datetime
import fnmatch
import http.client
import json
import math
import os
import platform
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA_DIR = os.path.join(HERE, 'lua')
RESULTS_DIR = os.path.join(HERE, 'results')
sys.path.insert(0, ROOT)
# Production database names: no test_ prefix (configuration.py), in the
# store's server and in this process's loader alike.
os.environ.pop('WEBPY_ENV', None)

TEMP_PREFIX = 'kvbench-'
KEY_FORMAT = 'k%08d'          # the same in bench/lua/common.lua
BUCKET = 'bench'
BIG_BUCKET = 'big'
CONTENT_TYPE = 'application/octet-stream'
THETA = 0.99
KIB = 1024
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
DISTURBED_CORES = 0.25        # other processes' CPU during a row that makes it suspect
QUIET_CORES = 0.20            # what counts as a quiet machine before a row
ONE_WORKER = 90               # % of the server's CPU in one worker process: unbalanced


def log(message, *args):
    stamp = time.strftime('%H:%M:%S')
    print('[bench %s] %s' % (stamp, message % args if args else message), flush=True)


class BenchError(RuntimeError):
    pass


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


def prefix_end(text):
    """The smallest string above every string starting with text (ASCII)."""
    return text[:-1] + chr(ord(text[-1]) + 1)


# -- processes and cleanup -----------------------------------------------------------

def _stat_fields(pid):
    """/proc/<pid>/stat fields from the state on (index 0 = field 3)."""
    with open('/proc/%d/stat' % pid, 'rb') as f:
        data = f.read().decode('ascii', 'replace')
    return data[data.rindex(')') + 2:].split()


def start_time(pid):
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def reap_stale_runs():
    """Kill what a run that died without cleaning up (SIGKILL) left behind."""
    from test.mariadb import _pid_alive as pid_alive, _reap_stale_dirs
    _reap_stale_dirs()  # the harness's servers whose owner is gone
    tmp = tempfile.gettempdir()
    for entry in sorted(os.listdir(tmp)):
        if not entry.startswith(TEMP_PREFIX):
            continue
        base = os.path.join(tmp, entry)
        try:
            with open(os.path.join(base, 'owner.pid')) as f:
                owner = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if owner == os.getpid() or pid_alive(owner):
            continue
        try:
            with open(os.path.join(base, 'pids')) as f:
                recorded = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
        except (OSError, ValueError):
            recorded = []
        for pid, started in recorded:
            if start_time(pid) == started:  # still the process we started
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        log('removed %s, left by an earlier run (pid %d)', base, owner)
        shutil.rmtree(base, ignore_errors=True)


class Run:
    """What one benchmark run started: stopped in reverse order by close()."""

    def __init__(self):
        reap_stale_runs()
        self.tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        with open(os.path.join(self.tmp, 'owner.pid'), 'w') as f:
            f.write('%d\n' % os.getpid())
        self._cleanups = []
        self._lock = threading.Lock()

    def defer(self, function, *args):
        self._cleanups.append((function, args))

    def track(self, pid):
        """Remember a process group we lead, for the next run's reaper."""
        with self._lock, open(os.path.join(self.tmp, 'pids'), 'a') as f:
            f.write('%d %d\n' % (pid, start_time(pid) or 0))

    def path(self, *names):
        return os.path.join(self.tmp, *names)

    def close(self):
        while self._cleanups:
            function, args = self._cleanups.pop()
            try:
                function(*args)
            except Exception as e:  # keep cleaning up
                log('cleanup %s failed: %s', getattr(function, '__name__', function), e)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Process:
    """A server this run started, leading its own process group."""

    def __init__(self, run, name, cmd, env=None, cwd=ROOT):
        self.name = name
        self.log_path = run.path('%s.log' % name)
        with open(self.log_path, 'ab') as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                         start_new_session=True)
        self.pid = self.proc.pid
        self._stopped = False
        run.track(self.pid)
        run.defer(self.stop)

    def running(self):
        return self.proc.poll() is None

    def stop(self, grace=10.0):
        """SIGTERM the group, SIGKILL whatever is left of it after `grace`."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # workers that outlived the master
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        # The server's log outlives the run, for errors a row counted (gitignored).
        with contextlib.suppress(OSError):
            os.makedirs(os.path.join(RESULTS_DIR, 'tmp'), exist_ok=True)
            shutil.copyfile(self.log_path, os.path.join(RESULTS_DIR, 'tmp', os.path.basename(self.log_path)))

    def tail(self, lines=20):
        try:
            with open(self.log_path, 'rb') as f:
                return '\n'.join(f.read().decode('utf-8', 'replace').splitlines()[-lines:])
        except OSError:
            return ''


def free_port():
    """A free TCP port on 127.0.0.1, below the ephemeral range: the harness's."""
    from test.mariadb import _pick_port
    return _pick_port()


def http_request(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http(process, port, path, ok=lambda status, body: status == 200, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        if not process.running():
            raise BenchError('%s exited while starting:\n%s' % (process.name, process.tail()))
        try:
            status, body = http_request(port, 'GET', path, timeout=2)
            if ok(status, body):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError('%s did not answer on port %d within %d s:\n%s'
                             % (process.name, port, timeout, process.tail()))
        time.sleep(0.1)


# -- CPU accounting -----------------------------------------------------------------

def process_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        fields = _stat_fields(pid)
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def machine_ticks():
    """(busy, steal) clock ticks of the whole machine, from /proc/stat: busy is
    user + nice + system + irq + softirq; steal is what the hypervisor took."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]] + [0] * 8
    return values[0] + values[1] + values[2] + values[5] + values[6], values[7]


class CPUSnapshot:
    """CPU ticks of named groups of processes, of this process and of the machine."""

    def __init__(self, groups):
        self.wall = time.monotonic()
        self.groups = {name: {pid: process_ticks(pid) for pid in pids} for name, pids in groups.items()}
        times = os.times()
        self.self_ticks = (times.user + times.system) * CLOCK_TICKS
        self.busy, self.steal = machine_ticks()

    def since(self, before):
        """{group: CPU ms} between before and self, plus 'self', 'machine' and 'wall' (s)."""
        spent = {}
        for name, pids in self.groups.items():
            each = {}
            for pid, after in pids.items():
                if after is not None:
                    each[pid] = (after - (before.groups.get(name, {}).get(pid) or 0)) * 1000.0 / CLOCK_TICKS
            spent[name] = sum(each.values())
            spent[name + '_each'] = each
        spent['self'] = (self.self_ticks - before.self_ticks) * 1000.0 / CLOCK_TICKS
        spent['machine'] = (self.busy - before.busy) * 1000.0 / CLOCK_TICKS
        spent['steal'] = (self.steal - before.steal) * 1000.0 / CLOCK_TICKS
        spent['wall'] = self.wall - before.wall
        return spent


def other_cores(groups_fn, seconds=1.0):
    """Cores busy with processes that are none of ours, over `seconds`."""
    before = CPUSnapshot(groups_fn())
    time.sleep(seconds)
    spent = CPUSnapshot(groups_fn()).since(before)
    ours = sum(v for k, v in spent.items() if k not in ('machine', 'steal', 'wall') and not k.endswith('_each'))
    return (max(0.0, spent['machine'] - ours) + spent['steal']) / 1000.0 / spent['wall']


def wait_idle(server_fn, max_wait=60):
    """Wait until the server has finished the requests a previous row left queued
    (a client that went away does not take back the requests it sent)."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = CPUSnapshot({'server': server_fn()})
        time.sleep(0.5)
        if CPUSnapshot({'server': server_fn()}).since(before)['server'] < 0.05 * 500:
            return
    log('the server is still busy after %d s', max_wait)


def wait_quiet(groups_fn, max_wait):
    """Wait (up to max_wait s) until other processes leave the CPUs alone."""
    deadline = time.monotonic() + max_wait
    busy = other_cores(groups_fn, 0.5)
    if busy <= QUIET_CORES:
        return busy
    log('others (processes, steal) use %.2f cores; waiting up to %d s for a quiet machine', busy, max_wait)
    while time.monotonic() < deadline:
        busy = other_cores(groups_fn, 1.0)
        if busy <= QUIET_CORES:
            return busy
    log('the machine stays busy (%.2f cores taken by others): measuring anyway', busy)
    return busy


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


def main_rows():
    rows = [
        Row('hello', 'hello', 'web.py hello world (GET /), same server settings: the ceiling',
            'fixed.lua', {'BENCH_EXPECT': 'Hello'}),
        Row('pymysql', 'pymysql', 'PyMySQL primary-key SELECT loop on one server, one connection: '
            "the database's own cost"),
        Row('floor', 'floor', 'hello world + the engine reading the key on its first owner '
            '(bench/floor.py): the floor under GET r=one', 'kv.lua', {'BENCH_READ': '1'}, etcd='etcd-C'),
    ]
    for mix, read, etcd in (('C', '1', 'etcd-C'), ('B', '0.95', 'etcd-B'), ('A', '0.5', 'etcd-A'),
                            ('W', '0', 'etcd-W')):
        for q in ('one', 'quorum'):
            label = {'C': 'GET r=%s' % q, 'B': '95%% GET r=%s / 5%% PUT w=%s' % (q, q),
                     'A': '50%% GET r=%s / 50%% PUT w=%s' % (q, q), 'W': 'PUT w=%s' % q}[mix]
            rows.append(Row('%s-%s' % (mix, q), 'store', '%s: %s, 1 KiB' % (mix, label), 'kv.lua',
                            {'BENCH_READ': read, 'BENCH_R': q, 'BENCH_W': q}, etcd=etcd))
    rows += [
        Row('C-1MiB', 'store', 'GET r=quorum, 1 MiB values', 'kv.lua',
            {'BENCH_READ': '1', 'BENCH_R': 'quorum', 'BENCH_BUCKET': BIG_BUCKET}, big=True,
            etcd='etcd-C-1MiB'),
        Row('W-1MiB', 'store', 'PUT w=quorum, 1 MiB values', 'kv.lua',
            {'BENCH_READ': '0', 'BENCH_W': 'quorum', 'BENCH_BUCKET': BIG_BUCKET,
             'BENCH_VALUE_BYTES': str(MIB)}, big=True, etcd='etcd-W-1MiB'),
        Row('list', 'store', 'GET /buckets/bench/keys?limit=1000 from a random cursor', 'list.lua',
            {'BENCH_EXPECT': '"keys"'}, etcd='etcd-list'),
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
    return rows


def select_rows(rows, only):
    if not only:
        return rows
    patterns = [p.strip() for p in ','.join(only).split(',') if p.strip()]
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if not chosen:
        raise BenchError('--only %s matches no row; rows: %s' % (','.join(patterns),
                                                                 ', '.join(r.name for r in rows)))
    return chosen


# -- wrk ------------------------------------------------------------------------------

def run_wrk(run, url, script, env, duration, connections, cpu):
    """Run wrk once; (its BENCH_RESULT document, its own CPU ms)."""
    cmd = (['taskset', '-c', str(cpu)] if cpu is not None else []) + [
        shutil.which('wrk') or 'wrk', '-t1', '-c%d' % connections, '-d%ds' % duration,
        '--timeout', '10s', '-s', os.path.join(LUA_DIR, script), url]
    wrk_env = dict(os.environ, BENCH_LUA_DIR=LUA_DIR, **env)
    out_path = run.path('wrk.out')
    with open(out_path, 'wb') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=wrk_env, start_new_session=True)
    run.track(proc.pid)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path, 'rb') as f:
        output = f.read().decode('utf-8', 'replace')
    for line in output.splitlines():
        if line.startswith('BENCH_RESULT '):
            return json.loads(line[len('BENCH_RESULT '):]), (usage.ru_utime + usage.ru_stime) * 1000.0
    raise BenchError('wrk gave no result (exit %s):\n%s' % (proc.returncode, output[-3000:]))


@dataclasses.dataclass
class Target:
    """Where a row sends its requests and whose CPU it counts."""
    url: str
    server: callable          # () -> pids of the server (its process tree, etcd)
    db: callable = lambda: []  # () -> pids of the databases
    deadlocks: callable = None  # () -> InnoDB deadlocks so far, summed over the databases


def process_split(each):
    """How the server's CPU divided among its busiest processes, in percent
    (the workers, and uWSGI's HTTP router; a gunicorn worker keeps the
    connections it accepted)."""
    total = sum(each.values())
    if total <= 0 or len(each) < 2:
        return None
    shares = sorted((100.0 * ms / total for ms in each.values()), reverse=True)
    return [round(s) for s in shares if s >= 1]


def measure_wrk(run, args, row, target, env_extra=None, connections=None):
    connections = connections or (max(1, args.connections // 4) if row.big else args.connections)
    env = dict(row.env, **(env_extra or {}))
    groups = lambda: {'server': target.server(), 'db': target.db()}
    attempts = []
    for attempt in range(1 + args.retries):
        wait_idle(lambda: target.server() + target.db())
        wait_quiet(groups, args.quiet_wait)
        if args.warmup:
            run_wrk(run, target.url, row.script, env, args.warmup, connections, args.wrk_cpu)
        deadlocks_before = target.deadlocks() if target.deadlocks else None
        before = CPUSnapshot(groups())
        result, wrk_ms = run_wrk(run, target.url, row.script, env, args.duration, connections, args.wrk_cpu)
        spent = CPUSnapshot(groups()).since(before)
        deadlocks = target.deadlocks() - deadlocks_before if target.deadlocks else None
        requests = result['requests']
        seconds = result['duration_us'] / 1e6
        ours = spent['server'] + spent['db'] + spent['self'] + wrk_ms
        other = (max(0.0, spent['machine'] - ours) + spent['steal']) / 1000.0 / spent['wall']
        lat = result['latency_us']
        measured = dict(
            name=row.name, system=row.system, what=row.what, connections=connections,
            seconds=seconds, requests=requests, rps=requests / seconds if seconds else 0.0,
            p50_ms=lat['p50'] / 1000.0, p99_ms=lat['p99'] / 1000.0, p999_ms=lat['p999'] / 1000.0,
            mean_ms=lat['mean'] / 1000.0, max_ms=lat['max'] / 1000.0,
            errors=result['errors'] + sum(result['socket_errors'].values()),
            statuses=result['statuses'], socket_errors=result['socket_errors'],
            server_ms=spent['server'], db_ms=spent['db'],
            cpu_ms_per_req=(spent['server'] + spent['db']) / requests if requests else None,
            server_ms_per_req=spent['server'] / requests if requests else None,
            db_ms_per_req=spent['db'] / requests if requests else None,
            wrk_cpu_pct=100.0 * wrk_ms / 1000.0 / seconds if seconds else None,
            machine_cores=spent['machine'] / 1000.0 / spent['wall'],
            other_cores=other, attempt=attempt + 1, bytes=result['bytes'],
            split=process_split(spent['server_each']), deadlocks=deadlocks)
        attempts.append(measured)
        log('%-12s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  CPU %.3f ms/req '
            '(server %.3f, db %.3f)  wrk %.0f%%  others %.2f cores',
            row.name, measured['rps'], measured['p50_ms'], measured['p99_ms'], measured['errors'],
            measured['cpu_ms_per_req'] or 0, measured['server_ms_per_req'] or 0,
            measured['db_ms_per_req'] or 0, measured['wrk_cpu_pct'] or 0, other)
        measured['disturbed'] = other > DISTURBED_CORES
        measured['one_worker'] = bool(row.system in ('store', 'hello', 'floor') and args.workers > 1 and connections > 1
                                      and measured['split'] and measured['split'][0] >= ONE_WORKER)
        if not measured['disturbed'] and not measured['one_worker']:
            break
        why = ('others (processes, steal) took %.2f cores' % other if measured['disturbed']
               else 'one worker served %d%% of the server CPU' % measured['split'][0])
        log('%s: %s: %s', row.name, why, 'running it again' if attempt < args.retries else 'keeping it, marked')
    return min(attempts, key=lambda m: (m['disturbed'], m['one_worker'], m['other_cores']))


# -- MariaDB ------------------------------------------------------------------------------

def innodb_deadlocks(cluster, count):
    """InnoDB deadlocks since start, summed over the first count servers (each
    one a transaction the store retried)."""
    total = 0
    for server in cluster.servers[:count]:
        conn = server.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
                total += int(cursor.fetchone()[1])
        finally:
            conn.close()
    return total


def parse_size(text):
    text = str(text).strip().upper()
    units = {'K': KIB, 'M': MIB, 'G': 1024 * MIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def start_cluster(run, count, args):
    """count private mariadbd servers (test/mariadb.py), sized for benchmarking."""
    from test.mariadb import MariaDBCluster
    log('starting %d private mariadbd servers', count)
    cluster = MariaDBCluster(count)
    run.defer(cluster.stop, False)
    cluster.start()
    pool = parse_size(args.buffer_pool)
    for server in cluster:
        conn = server.connect(autocommit=True)
        try:
            with conn.cursor() as cursor:
                # The harness sizes servers for quick tests (32 MiB buffer pool, 16 MiB
                # redo log); a benchmark wants the data set in memory, as production would.
                cursor.execute('SET GLOBAL innodb_buffer_pool_size = %d' % pool)
                cursor.execute('SET GLOBAL innodb_log_file_size = %d' % (256 * MIB))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    cursor.execute("SHOW STATUS LIKE 'Innodb_buffer_pool_resize_status'")
                    row = cursor.fetchone()
                    status = (row[1] if row else '') or ''
                    if not status or 'ompleted' in status:
                        break
                    time.sleep(0.2)
        finally:
            conn.close()
    return cluster


def mariadb_facts(cluster):
    conn = cluster[0].connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute('SELECT VERSION(), @@innodb_buffer_pool_size, @@innodb_log_file_size, '
                           '@@innodb_flush_log_at_trx_commit, @@max_allowed_packet')
            version, pool, logsize, flush, packet = cursor.fetchone()
    finally:
        conn.close()
    return dict(version=version, buffer_pool=pool, log_file_size=logsize, flush_log_at_trx_commit=flush,
                max_allowed_packet=packet)


def write_store_config(run, cluster, database, count, name='store.cfg'):
    """A configuration with `count` partitions of the cluster, N=3 (at most count), R=W=quorum."""
    from test.support import mariadb_partitions
    replicas = min(3, count)
    quorum = replicas // 2 + 1
    parser = configparser.ConfigParser(interpolation=None)
    parser['store'] = dict(replicas=str(replicas), r=str(quorum), w=str(quorum), key_length='1024',
                           max_value_bytes=str(8 * MIB), vnodes='64', connect_timeout='1.0',
                           read_timeout='2.0')
    for partition, fields in mariadb_partitions(cluster, database=database, count=count).items():
        parser['partition-' + partition] = {k: str(v) for k, v in fields.items()}
    path = run.path(name)
    with open(path, 'w') as f:
        f.write('# Written by bench/run.py: %d private MariaDB partitions.\n' % count)
        parser.write(f)
    return path, dict(replicas=replicas, r=quorum, w=quorum, partitions=count)


def write_sqlite_config(run):
    path = run.path('sqlite.cfg')
    with open(path, 'w') as f:
        f.write('[store]\nreplicas = 1\n[partition-p1]\nengine = sqlite\npath = %s\n' % run.path('p1.sqlite3'))
    return path


class _Recorder:
    """A cursor that records the statements an engine runs instead of running them."""

    def __init__(self):
        self.calls = []

    def execute(self, statement, args=()):
        self.calls.append((statement, args))


def value_for(index, size, filler):
    head = b'%08d:' % index
    return (head + filler)[:size] if size > len(head) else head[:size]


def make_filler(count, value_bytes):
    """The bytes after each value's index: printable, the same for a data set."""
    chunk = bytes(random.Random(count).randrange(97, 123) for _ in range(min(value_bytes, 4096)))
    return (chunk * (value_bytes // len(chunk) + 1))[:value_bytes]


def _load_slice(job):
    """Write keys start, start + step, ... < count (one process of bulk_load)."""
    from kvstore import configuration
    from datastore import Datastore
    from kvstore.coordinator.versions import Version

    config_path, bucket, start, count, step, value_bytes = job
    store = Datastore(configuration.load(config_path))
    try:
        filler = make_filler(count, value_bytes)
        batch_rows = max(1, (512 * KIB) // max(value_bytes, 1))
        batches = {}  # (partition, statement) -> rows
        recorder = _Recorder()
        if hasattr(store, 'placement'):  # the store's own choice of the key's N owners
            placement = lambda bucket, key: store.placement(bucket, key)[0]
        else:
            placement = lambda bucket, key: store.ring.preference_list(bucket, key, store.n)

        def send(name, statement):
            with store.engines[name]._cursor() as cursor:
                cursor.executemany(statement, batches.pop((name, statement)))

        for index in range(start, count, step):
            key = key_name(index)
            preference = placement(bucket, key)
            # What the coordinator (the first replica) makes for a new key ...
            version = Version.new({}, (preference[0], 1), value_for(index, value_bytes, filler), CONTENT_TYPE)
            # ... and the INSERT with which the engine stores it, on each replica.
            store.engines[preference[0]]._store(recorder, bucket, key, [], version)
            for statement, row in recorder.calls:
                for name in preference:
                    batch = batches.setdefault((name, statement), [])
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        send(name, statement)
            recorder.calls = []
        for name, statement in list(batches):
            send(name, statement)
    finally:
        store.close()


def _loader_signals():
    """A loader process dies on SIGTERM (Pool.terminate) without running the
    handlers it inherited: those would clean up the parent's servers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent cleans up


def bulk_load(config_path, bucket, count, value_bytes, processes=None):
    """Write `count` keys (KEY_FORMAT) of value_bytes each, fast and exactly as the store would.

    A fresh key's PUT makes Version.new(seen={}, dot=(coordinator, 1), ...) on the
    key's first replica and stores that version on each of its N replicas.  Here
    the engine itself renders those INSERTs (SQLEngine._store into a recording
    cursor) and they go out as batched multi-row INSERTs (PyMySQL's executemany),
    from parallel processes: threads would queue on the GIL.  Then a sample is
    read back through Datastore.get from every replica, and one key is written
    again by Datastore.put to check that its rows are the loader's.
    """
    import multiprocessing

    from kvstore import configuration
    from datastore import Datastore

    started = time.monotonic()
    processes = processes or min(max(1, count // 2000), 2 * (os.cpu_count() or 1))
    jobs = [(config_path, bucket, k, count, processes, value_bytes) for k in range(processes)]
    if processes == 1:
        _load_slice(jobs[0])
    else:
        with multiprocessing.get_context('fork').Pool(processes, initializer=_loader_signals) as pool:
            pool.map(_load_slice, jobs, chunksize=1)
    seconds = time.monotonic() - started
    store = Datastore(configuration.load(config_path))
    try:
        filler = make_filler(count, value_bytes)
        sample = random.Random(1).sample(range(count), min(count, 20))
        for index in sample:
            read_back(store, bucket, index, value_for(index, value_bytes, filler))
        same_rows_as_put(store, bucket, sample[0], value_for(sample[0], value_bytes, filler))
    finally:
        store.close()
    return seconds


def put_load(config_path, bucket, count, value_bytes, threads=1):
    """Write keys through Datastore.put itself (for few keys: the 1 MiB ones).

    One writer by default: concurrent puts of new keys can fail on an owner with
    'lock conflict' (InnoDB gap locks of SELECT ... FOR UPDATE on absent rows), and
    that owner then misses the key until it is repaired; the data set must be whole."""
    import concurrent.futures

    from kvstore import configuration
    from datastore import Datastore

    started = time.monotonic()
    store = Datastore(configuration.load(config_path))
    try:
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
    finally:
        store.close()
    return time.monotonic() - started


def read_back(store, bucket, index, value):
    current = store.get(bucket, key_name(index), r=store.n).current
    if len(current) != 1 or current[0].value != value or current[0].content_type != CONTENT_TYPE:
        raise BenchError('key %s/%s did not read back as loaded: %d live versions%s' % (
            bucket, key_name(index), len(current), ', %d bytes of %s' % (
                len(current[0].value), current[0].content_type) if current else ''))


def _raw_rows(store, bucket, key):
    """{partition: [{column: value}]} of every table row naming the key."""
    found = {}
    for name, engine in store.engines.items():
        with engine._cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                           "AND column_name = 'key_name'")
            tables = sorted(row[0] if isinstance(row[0], str) else row[0].decode() for row in cursor.fetchall())
            rows = []
            for table in tables:
                cursor.execute('SELECT * FROM `%s` WHERE bucket = %%s AND key_name = %%s' % table,
                               (bucket.encode(), key.encode()))
                columns = [d[0] for d in cursor.description]
                rows += [dict(zip(columns, row), _table=table) for row in cursor.fetchall()]
            found[name] = rows
    return found


def same_rows_as_put(store, bucket, index, value):
    """Write a loaded key again through Datastore.put, as a new key, and compare its
    rows on every partition with the loader's (all but the fresh id and time)."""
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
    strip = lambda rows: sorted(sorted((k, v) for k, v in r.items() if k not in ('version_id', 'modified'))
                                for r in rows)
    for name in store.engines:
        if strip(loaded[name]) != strip(put[name]):
            raise BenchError('the loader\'s rows of %s/%s on %s differ from what Datastore.put writes:\n'
                             'loader: %r\nput:    %r' % (bucket, key, name, strip(loaded[name])[:1],
                                                         strip(put[name])[:1]))


def drop_database(cluster, database, count):
    for server in cluster.servers[:count]:
        conn = server.connect(autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute('DROP DATABASE IF EXISTS `%s`' % database)
        finally:
            conn.close()


# -- the serving stack ----------------------------------------------------------------------

def venv_binary(name):
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if not found:
        raise BenchError('%s not found: run with the project virtualenv (make bench)' % name)
    return found


def server_setting(args):
    if args.server == 'gunicorn':
        return 'gunicorn --config bench/gunicorn.conf.py, WORKERS=%d THREADS=%d (gthread)' % (
            args.workers, args.threads)
    return 'python serve.py (uWSGI HTTP router), WORKERS=%d THREADS=%d' % (args.workers, args.threads)


def start_server(run, name, config_path, args, app=None, probe='/'):
    """The store as `make run` serves it (serve.py: uWSGI), or under gunicorn
    gthread (--server gunicorn) for comparison, with the settings in the env.

    XDG_RUNTIME_DIR is pointed at the run's temporary directory, so that
    gunicorn's control socket does not replace that of another gunicorn on
    this machine.  app (for the hello world) is given on the command line.
    """
    port = free_port()
    env = dict(os.environ, BIND='127.0.0.1:%d' % port, WORKERS=str(args.workers),
               THREADS=str(args.threads), STORE_CONFIG=config_path, XDG_RUNTIME_DIR=run.tmp,
               RUN_AS=os.environ.get('RUN_AS') or pwd.getpwuid(os.getuid()).pw_name,
               PYTHONPATH=HERE)
    env.pop('ACCESS_LOG', None)
    if args.server == 'gunicorn':
        cmd = [venv_binary('gunicorn'), '--config', 'bench/gunicorn.conf.py'] + (['--pythonpath', HERE, app] if app else [])
    else:
        cmd = [sys.executable, 'serve.py'] + ([app] if app else [])
    process = Process(run, name, cmd, env=env)
    wait_http(process, port, probe)
    deadline = time.monotonic() + 30
    while len(process_tree(process.pid)) < 1 + args.workers and time.monotonic() < deadline:
        time.sleep(0.1)
    process.port = port
    process.url = 'http://127.0.0.1:%d' % port
    return process


# -- etcd ---------------------------------------------------------------------------------

def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode('ascii')


def start_etcd(run):
    client, peer = free_port(), free_port()
    data_dir = run.path('etcd')
    client_url, peer_url = 'http://127.0.0.1:%d' % client, 'http://127.0.0.1:%d' % peer
    cmd = [shutil.which('etcd') or 'etcd', '--name', 'bench', '--data-dir', data_dir,
           '--listen-client-urls', client_url, '--advertise-client-urls', client_url,
           '--listen-peer-urls', peer_url, '--initial-advertise-peer-urls', peer_url,
           '--initial-cluster', 'bench=' + peer_url, '--initial-cluster-state', 'new',
           '--quota-backend-bytes', str(8 * 1024 * MIB)]
    process = Process(run, 'etcd', cmd)
    wait_http(process, client, '/health', ok=lambda s, b: s == 200 and b'true' in b)
    process.port = client
    process.url = client_url
    return process


def etcd_call(port, path, document):
    status, body = http_request(port, 'POST', path, json.dumps(document),
                                {'Content-Type': 'application/json'}, timeout=60)
    if status != 200:
        raise BenchError('etcd %s answered %d: %s' % (path, status, body[:300]))
    return json.loads(body)


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


# -- the PyMySQL reference ----------------------------------------------------------------

def measure_pymysql(run, args, row, cluster, config_path, database, groups_db):
    """Primary-key SELECTs of the engine's own read query, one connection, zipfian keys
    among those the first server holds."""
    from kvstore import configuration
    import pymysql
    from kvstore.engines import COLUMNS
    from kvstore.coordinator.ring import Ring

    config = configuration.load(config_path)
    ring = Ring.of(config)
    server = cluster[0]
    held = bytearray(args.keys)
    for index in range(args.keys):
        held[index] = 'p1' in ring.preference_list(BUCKET, key_name(index), config.replicas)
    zipf = Zipfian(args.keys, seed=7)
    sql = 'SELECT ' + COLUMNS + ' FROM objects WHERE bucket = %s AND key_name = %s'
    bucket = BUCKET.encode()

    def next_key():
        while True:
            index = zipf.next()
            if held[index]:
                return key_name(index).encode()

    conn = pymysql.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           database=database, autocommit=True, charset='utf8mb4', ssl_disabled=True)
    groups = lambda: {'server': [], 'db': groups_db()}
    attempts = []
    try:
        cursor = conn.cursor()
        for attempt in range(1 + args.retries):
            wait_quiet(groups, args.quiet_wait)
            deadline = time.monotonic() + args.warmup
            while time.monotonic() < deadline:
                cursor.execute(sql, (bucket, next_key()))
                cursor.fetchall()
            latencies, errors = [], 0
            before = CPUSnapshot(groups())
            client_before = time.thread_time()
            started = time.perf_counter()
            deadline = started + args.duration
            clock = time.perf_counter_ns
            while True:
                t0 = clock()
                cursor.execute(sql, (bucket, next_key()))
                found = cursor.fetchall()
                latencies.append(clock() - t0)
                if len(found) != 1:
                    errors += 1
                if t0 > 0 and (len(latencies) & 63) == 0 and time.perf_counter() >= deadline:
                    break
            seconds = time.perf_counter() - started
            client_ms = (time.thread_time() - client_before) * 1000.0
            spent = CPUSnapshot(groups()).since(before)
            requests = len(latencies)
            latencies.sort()

            def pct(p):
                return latencies[min(requests - 1, int(math.ceil(p / 100.0 * requests)) - 1)] / 1e6

            other = (max(0.0, spent['machine'] - spent['db'] - spent['self']) + spent['steal']) / 1000.0 / spent['wall']
            measured = dict(
                name=row.name, system=row.system, what=row.what, connections=1, seconds=seconds,
                requests=requests, rps=requests / seconds, p50_ms=pct(50), p99_ms=pct(99),
                p999_ms=pct(99.9), mean_ms=sum(latencies) / requests / 1e6, max_ms=latencies[-1] / 1e6,
                errors=errors, statuses={}, socket_errors={}, server_ms=0.0, db_ms=spent['db'],
                cpu_ms_per_req=spent['db'] / requests, server_ms_per_req=None,
                db_ms_per_req=spent['db'] / requests, client_ms_per_req=client_ms / requests,
                wrk_cpu_pct=None, machine_cores=spent['machine'] / 1000.0 / spent['wall'],
                other_cores=other, attempt=attempt + 1, bytes=0)
            measured['disturbed'], measured['one_worker'] = other > DISTURBED_CORES, False
            attempts.append(measured)
            log('%-12s %8.0f q/s    p50 %7.2f ms  p99 %7.2f ms  errors %d  mariadbd %.3f ms/query, '
                'client %.3f ms/query  others %.2f cores', row.name, measured['rps'], measured['p50_ms'],
                measured['p99_ms'], errors, measured['db_ms_per_req'], measured['client_ms_per_req'], other)
            if other <= DISTURBED_CORES:
                break
    finally:
        conn.close()
    return min(attempts, key=lambda m: m['other_cores'])


# -- profiling -------------------------------------------------------------------------------

def profile_store(run, args, row, target, master):
    """py-spy on every worker (--subprocesses) while `row` runs: a flame graph
    (bench/results/profile.svg) and collapsed stacks, summarised in results.md.

    --gil keeps the samples of the thread holding the GIL: where the workers' Python
    time goes; --nonblocking leaves the workers running at full speed."""
    py_spy = os.path.join(os.path.dirname(sys.executable), 'py-spy')
    if not os.access(py_spy, os.X_OK):
        py_spy = shutil.which('py-spy')
    if not py_spy:
        log('py-spy not installed (pip install py-spy): no profile')
        return None
    seconds = max(5, args.duration)
    name = 'profile.svg' if row.name == 'C-one' else 'profile-%s.svg' % row.name
    svg = os.path.join(RESULTS_DIR, name)
    raw = run.path('profile.txt')
    os.makedirs(RESULTS_DIR, exist_ok=True)
    spies = []
    for fmt, out in (('flamegraph', svg), ('raw', raw)):
        spies.append(subprocess.Popen([py_spy, 'record', '--pid', str(master), '--subprocesses',
                                       '--duration', str(seconds), '--rate', '200', '--nonblocking', '--gil',
                                       '--format', fmt, '-o', out],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
        run.track(spies[-1].pid)
    time.sleep(1)
    try:
        connections = max(1, args.connections // 4) if row.big else args.connections
        run_wrk(run, target.url, row.script, row.env, seconds + 1, connections, args.wrk_cpu)
    finally:
        errors = []
        for spy in spies:
            try:
                _, err = spy.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if spy.returncode:
                errors.append(err.decode('utf-8', 'replace')[-500:])
    if errors or not os.path.exists(raw):
        log('py-spy failed: %s', ' | '.join(errors))
        return None
    summary = summarise_profile(raw)
    summary.update(row=row.name, svg=name)
    return summary


LAYERS = (  # (leaf file prefix, layer), first match wins
    ('gunicorn/', 'gunicorn (HTTP server)'), ('web/', 'web.py'), ('mimerender', 'content negotiation'),
    ('mimeparse', 'content negotiation'), ('pymysql/', 'PyMySQL'), ('concurrent/', 'thread hand-offs'),
    ('threading.py', 'thread hand-offs'), ('queue.py', 'thread hand-offs'), ('json/', 'JSON'),
    ('controller.py', 'controller.py'), ('datastore.py', 'datastore.py'), ('engines.py', 'engines.py'),
    ('mysqlwire.py', 'mysqlwire.py'),
    ('versions.py', 'versions.py'), ('ring.py', 'ring.py'), ('documents.py', 'documents.py'),
    ('preconditions.py', 'preconditions.py'), ('socket.py', 'sockets'), ('selectors.py', 'sockets'),
    ('ssl.py', 'sockets'),
    ('coordinator/', 'datastore.py'),   # the datastore's layers (after versions.py and ring.py)
)


def _function(frame):
    """'name (file:line)' -> 'name (file)'."""
    head, _, where = frame.rpartition(' (')
    return '%s (%s)' % (head, where.split(':')[0]) if head else frame


def summarise_profile(path):
    """Sample shares: self and inclusive per function, self per layer (py-spy raw output)."""
    self_counts, inclusive, layers, total = {}, {}, {}, 0
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            if not count.isdigit():
                continue
            count = int(count)
            frames = [_function(fr) for fr in stack.split(';') if fr and not fr.startswith('process ')
                      and not fr.startswith('thread ')]
            if not frames:
                continue
            total += count
            leaf = frames[-1]
            self_counts[leaf] = self_counts.get(leaf, 0) + count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            leaf_file = leaf.rpartition(' (')[2].rstrip(')')
            layer = next((name for prefix, name in LAYERS if prefix in leaf_file), 'other Python')
            layers[layer] = layers.get(layer, 0) + count
    top = lambda d, n: [(k, 100.0 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]
    return dict(samples=total, self=top(self_counts, 20), inclusive=top(inclusive, 30), layers=top(layers, 20))


# -- machine ------------------------------------------------------------------------------------

def command_output(cmd, strip=True):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        return out.strip() if strip else out.rstrip()
    except (OSError, subprocess.SubprocessError):
        return '(unavailable)'


def machine_facts():
    import importlib.metadata
    import web
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
    except OSError:
        pass
    wrk_version = command_output(['sh', '-c', 'wrk -v 2>&1 | head -1'])
    commit = command_output(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'])
    if command_output(['git', '-C', ROOT, 'status', '--porcelain', '--untracked-files=no']):
        commit += ' + uncommitted changes'
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
        nproc=command_output(['nproc']), cpu=cpu, free=command_output(['free', '-h'], strip=False),
        commit=commit, kernel=platform.release(), python=sys.version.split()[0], uwsgi=importlib.metadata.version('pyuwsgi'),
        webpy=getattr(web, '__version__', '?'),
        etcd=command_output(['etcd', '--version']).splitlines()[0] if shutil.which('etcd') else '(not installed)',
        wrk=wrk_version.split(' Copyright')[0])


# -- reports --------------------------------------------------------------------------------------

def fmt(value, digits=2):
    if value is None:
        return '–'
    if isinstance(value, float) and value >= 100:
        return '{:,.0f}'.format(value)
    return '{:,.{}f}'.format(value, digits)


def ratio(a, b):
    return '%.2f×' % (a / b) if a and b else '–'


def results_table(results):
    by_name = {r['name']: r for r in results}
    hello = by_name.get('hello')
    lines = ['| row | workload | conns | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU ms/req '
             '(server + db) | server | db | worker split | wrk CPU | dead-locks | req/s ÷ hello | req/s ÷ etcd '
             '| CPU ÷ etcd |',
             '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']
    for r in results:
        etcd = by_name.get(r.get('etcd') or '')
        flag = (' †' if r.get('disturbed') else '') + (' ‡' if r.get('one_worker') else '')
        if len({x.get('measured') for x in results}) > 1:
            flag += ' (%s)' % (r.get('measured') or '?')[11:]
        if len({x.get('commit') for x in results}) > 1:
            flag += ' (%s)' % (r.get('commit') or '?')
        server = fmt(r['server_ms_per_req'], 3)
        if r['system'] == 'pymysql':
            server = '(client %s)' % fmt(r.get('client_ms_per_req'), 3)
        split = '/'.join(str(s) for s in r['split']) if r.get('split') and r['system'] != 'etcd' else '–'
        lines.append('| %s%s | %s | %d | %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s |' % (
            r['name'], flag, r['what'], r['connections'], fmt(r['rps'], 0), fmt(r['p50_ms']), fmt(r['p99_ms']),
            fmt(r['p999_ms']), r['errors'], fmt(r['cpu_ms_per_req'], 3), server,
            fmt(r['db_ms_per_req'], 3), split,
            ('%.0f%%' % r['wrk_cpu_pct']) if r.get('wrk_cpu_pct') is not None else '–',
            r['deadlocks'] if r.get('deadlocks') is not None else '–',
            ratio(r['rps'], hello['rps']) if hello and r is not hello else '–',
            ratio(r['rps'], etcd['rps']) if etcd else '–',
            ratio(r['cpu_ms_per_req'], etcd['cpu_ms_per_req']) if etcd else '–'))
    return '\n'.join(lines)


def facts_section(facts, settings):
    mariadb = facts.get('mariadb') or {}
    lines = ['## Machine', '',
             '- date: %s' % facts['date'],
             '- kvstore commit: %s' % facts.get('commit', '?'),
             '- `nproc`: %s (%s), kernel %s' % (facts['nproc'], facts['cpu'], facts['kernel']),
             '- Python %s, uWSGI %s, web.py %s' % (facts['python'], facts.get('uwsgi', '?'), facts['webpy']),
             '- MariaDB: %s' % (mariadb.get('version', '(not started)')),
             '- etcd: %s' % facts['etcd'],
             '- wrk: %s' % facts['wrk'],
             '', '`free -h`:', '', '```', facts['free'], '```', '',
             '## Settings', '']
    lines += ['- %s: %s' % (k, v) for k, v in settings.items()]
    if mariadb:
        lines.append('- MariaDB servers (test/mariadb.py, then SET GLOBAL): innodb_buffer_pool_size %d MiB, '
                     'innodb_log_file_size %d MiB, innodb_flush_log_at_trx_commit=%s, max_allowed_packet %d MiB'
                     % (mariadb['buffer_pool'] // MIB, mariadb['log_file_size'] // MIB,
                        mariadb['flush_log_at_trx_commit'], mariadb['max_allowed_packet'] // MIB))
    return '\n'.join(lines)


LEGEND = """\
How to read it:

- **CPU ms/req** is the CPU time (user + system, from `/proc/<pid>/stat`) that
  the server (uWSGI's master, router and workers, or etcd) and the databases (every
  mariadbd) spent during the row, divided by the requests answered.  With two
  cores shared by everything, it is the number to compare; req/s follows from
  it once the cores are full.  For `pymysql` it is mariadbd's CPU per query;
  the Python client's own CPU is shown beside it.
- latency percentiles are wrk's (closed loop: each connection sends its next
  request when the last one is answered); `pymysql` times each query.
- **errors** counts responses outside 2xx (and 2xx bodies without the
  expected content, e.g. an etcd range without `kvs`) plus socket errors.
- **wrk CPU** is wrk's own CPU (one thread, pinned to one CPU) as a share of
  one core: far from 100 %% means wrk was not the bottleneck.
- **req/s ÷ hello** compares with the web.py hello world under the same
  server settings; **÷ etcd** with etcd's matching operation (range for
  GET, put for PUT, the same mixes, a 1000-key range for listing).
- **floor** is the hello world plus one primary-key SELECT on the key's
  first owner through the store's engine, and nothing else of the store:
  no GET r=one can cost less on this stack.
- † marks a row during which other processes on the machine (or the
  hypervisor, as steal time) took more than %.2f cores (measured from
  /proc/stat): its numbers are suspect.
- **worker split**: the share of the server's CPU each process took,
  busiest first (under uWSGI the workers and the HTTP router; the router
  hands each request to a free worker).  Under gunicorn gthread a worker
  keeps the keep-alive connections it accepted, and wrk opens all its
  connections at once: often one worker wins nearly all of them and the
  other idles.  Such a row is run again (up to
  --retries times); ‡ marks one that stayed unbalanced (one worker above
  %d %%).  It costs more than throughput: one worker's threads then contend for
  its GIL, so even the CPU per request rises.
- 1 MiB rows use a quarter of the connections.
- Durability differs: these MariaDB servers run with
  innodb_flush_log_at_trx_commit=2 (no fsync per commit), etcd fsyncs its WAL
  on every write.
""" % (DISTURBED_CORES, ONE_WORKER)


def profile_section(profile):
    if not profile:
        return ''
    lines = ['', '## Profile of the store under %s (py-spy)' % profile['row'], '',
             '%d samples, taken at 200 Hz in every worker, of the thread holding the GIL '
             '(`py-spy record --subprocesses --gil --nonblocking`): where the workers\' Python time goes. '
             'Flame graph: `%s`.' % (profile['samples'], profile['svg']), '',
             '| self % | layer (file of the innermost frame) |', '|--:|---|']
    lines += ['| %.1f | %s |' % (share, name) for name, share in profile['layers']]
    lines += ['', '| self % | function (file) |', '|--:|---|']
    lines += ['| %.1f | `%s` |' % (share, frame) for frame, share in profile['self']]
    lines += ['', '| inclusive % | function (file) |', '|--:|---|']
    lines += ['| %.1f | `%s` |' % (share, frame) for frame, share in profile['inclusive']]
    return '\n'.join(lines) + '\n'


def plot(results, path, title, label=lambda r: r['name']):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    colors = {'store': '#1f77b4', 'hello': '#2ca02c', 'floor': '#8c564b', 'etcd': '#ff7f0e',
              'pymysql': '#9467bd'}
    names = [label(r) for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.42 * len(results) + 1.8), sharey=True)
    y = range(len(results))
    def scale(axis, values, label):
        values = [v for v in values if v]
        if values and max(values) / min(values) > 20:
            axis.set_xscale('log')
            label += ' (log scale)'
        axis.set_xlabel(label)

    left.barh(y, [r['rps'] for r in results], color=[colors.get(r['system'], 'grey') for r in results])
    scale(left, [r['rps'] for r in results], 'requests per second')
    left.set_yticks(list(y))
    left.set_yticklabels(names)
    left.invert_yaxis()
    for i, r in enumerate(results):
        left.text(r['rps'], i, ' %s' % fmt(r['rps'], 0), va='center', fontsize=8)
    right.barh(y, [r['cpu_ms_per_req'] or 0 for r in results],
               color=[colors.get(r['system'], 'grey') for r in results])
    scale(right, [r['cpu_ms_per_req'] for r in results], 'CPU ms per request, server + databases')
    for i, r in enumerate(results):
        if r['cpu_ms_per_req']:
            right.text(r['cpu_ms_per_req'], i, ' %s' % fmt(r['cpu_ms_per_req'], 3), va='center', fontsize=8)
    names = {'store': 'kvstore', 'hello': 'web.py hello world', 'floor': 'hello world + one SELECT',
             'etcd': 'etcd', 'pymysql': 'PyMySQL SELECT loop'}
    present = [k for k in colors if any(r['system'] == k for r in results)]
    height = fig.get_figheight()
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in present], [names[k] for k in present],
               loc='lower center', ncol=len(present), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the runs --------------------------------------------------------------------------------------

def main_run(run, args):
    rows = select_rows(main_rows(), args.only)
    systems = {r.system for r in rows}
    big = any(r.big for r in rows)
    facts = machine_facts()
    results = {}
    cluster = None
    config_path = None
    database = 'kvbench'
    store_info = {}
    profile = None

    if systems & {'store', 'floor', 'pymysql'}:
        cluster = start_cluster(run, 4, args)
        facts['mariadb'] = mariadb_facts(cluster)
        config_path, store_info = write_store_config(run, cluster, database, 4)
        log('loading %d keys of 1 KiB into %s', args.keys, BUCKET)
        seconds = bulk_load(config_path, BUCKET, args.keys, KIB)
        log('loaded in %.1f s (%.0f keys/s)', seconds, args.keys / seconds)
        if big and 'store' in systems:
            seconds = put_load(config_path, BIG_BUCKET, args.big_keys, MIB)
            log('loaded %d keys of 1 MiB into %s in %.1f s', args.big_keys, BIG_BUCKET, seconds)
    db_pids = (lambda: [s.pid for s in cluster if s.pid]) if cluster else (lambda: [])
    common_env = {'BENCH_KEYS': str(args.keys), 'BENCH_SCRAMBLE': str(scramble_multiplier(args.keys)),
                  'BENCH_THETA': str(THETA)}
    big_env = {'BENCH_KEYS': str(args.big_keys), 'BENCH_SCRAMBLE': str(scramble_multiplier(args.big_keys))}

    def env_for(row):
        env = dict(common_env)
        if row.big:
            env.update(big_env)
        return env

    if 'hello' in systems:
        hello = start_server(run, 'hello', config_path or write_sqlite_config(run), args,
                               app='hello:application')
        target = Target(hello.url + '/', lambda: process_tree(hello.pid), db_pids)
        for row in rows:
            if row.system == 'hello':
                results[row.name] = measure_wrk(run, args, row, target, env_for(row))
        hello.stop()

    if 'floor' in systems:
        floor = start_server(run, 'floor', config_path, args, app='floor:application',
                             probe='/buckets/%s/keys/%s' % (BUCKET, KEY_FORMAT % 0))
        target = Target(floor.url + '/', lambda: process_tree(floor.pid), db_pids)
        for row in rows:
            if row.system == 'floor':
                results[row.name] = measure_wrk(run, args, row, target, env_for(row))
        floor.stop()

    for row in rows:
        if row.system == 'pymysql':
            results[row.name] = measure_pymysql(run, args, row, cluster, config_path, database, db_pids)

    if 'store' in systems:
        store = start_server(run, 'store', config_path, args)
        target = Target(store.url + '/', lambda: process_tree(store.pid), db_pids,
                        lambda: innodb_deadlocks(cluster, 4))
        for row in rows:
            if row.system == 'store':
                results[row.name] = measure_wrk(run, args, row, target, env_for(row))
        if args.profile:
            row = next((r for r in main_rows() if r.name == args.profile and r.system == 'store'), None)
            if row is None:
                raise BenchError('--profile %s: not a store row' % args.profile)
            row.env = dict(row.env, **env_for(row))
            wait_idle(lambda: target.server() + target.db())
            log('profiling the store (%s) with py-spy', row.name)
            profile = profile_store(run, args, row, target, store.pid)
        store.stop()

    if 'etcd' in systems:
        if cluster is not None:
            # InnoDB's background work (purge, flushing) after the write rows
            # would take CPU from etcd's rows: the databases are done by now.
            cluster.stop(False)
        etcd = start_etcd(run)
        facts['etcd_server'] = http_request(etcd.port, 'GET', '/version')[1].decode('utf-8', 'replace')
        log('loading %d keys of 1 KiB into etcd', args.keys)
        seconds = etcd_load(etcd.port, BUCKET, args.keys, KIB)
        log('loaded in %.1f s', seconds)
        if any(r.big and r.system == 'etcd' for r in rows):
            etcd_load(etcd.port, BIG_BUCKET, args.big_keys, MIB)
        target = Target(etcd.url, lambda: [etcd.pid])
        for row in rows:
            if row.system == 'etcd':
                results[row.name] = measure_wrk(run, args, row, target, env_for(row))
        etcd.stop()

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    for row in rows:
        if row.name in results:
            results[row.name].update(etcd=row.etcd, measured=stamp, commit=facts.get('commit'))
    previous_path = os.path.join(RESULTS_DIR, 'results.json')
    if args.merge and os.path.exists(previous_path):
        # Rows measured now replace the same rows of the last results; the rest stay.
        with open(previous_path) as f:
            previous = json.load(f)
        for r in previous.get('results', []):
            results.setdefault(r['name'], r)
        if profile is None:
            profile = previous.get('profile')
        log('merged with the rows of %s', previous_path)
    ordered = [results[r.name] for r in main_rows() if r.name in results]
    settings = {
        'rows': '%d s each after a %d s warm-up; wrk -t1 -c%d (1 MiB rows: -c%d), pinned to CPU %s'
                % (args.duration, args.warmup, args.connections, max(1, args.connections // 4), args.wrk_cpu),
        'store': '4 MariaDB partitions, N=%s, R=%s, W=%s, 64 vnodes; %s' % (
            store_info.get('replicas', 3), store_info.get('r', 2), store_info.get('w', 2), server_setting(args)),
        'data': '%d keys of 1 KiB in bucket `%s`, %d keys of 1 MiB in bucket `%s`; keys zipfian '
                '(YCSB, theta %.2f, scrambled)' % (args.keys, BUCKET, args.big_keys, BIG_BUCKET, THETA),
        'etcd': 'one node on loopback, temporary data dir, --quota-backend-bytes 8 GiB, HTTP/JSON gateway',
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, 'results.json'), 'w') as f:
        json.dump(dict(facts=facts, settings=settings, results=ordered, profile=profile), f, indent=1)
    text = ['# kvstore benchmark', '',
            'Written by `bench/run.py%s` (issue 6). The benchmark only reports; nothing here is asserted.'
            % (' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''), '',
            results_table(ordered), '', LEGEND, profile_section(profile), facts_section(facts, settings)]
    with open(os.path.join(RESULTS_DIR, 'results.md'), 'w') as f:
        f.write('\n'.join(text) + '\n')
    plot(ordered, os.path.join(RESULTS_DIR, 'throughput.png'),
         'kvstore vs references, %s, %s cores' % (facts['date'][:10], facts['nproc']))
    log('wrote %s', os.path.join(RESULTS_DIR, 'results.md'))
    print(results_table(ordered))


def scaling_run(run, args):
    """GET r=1 with more keys and with more partitions; with the most keys, a
    listing page's latency for one client too."""
    keys = [int(k) for k in args.scaling_keys.split(',')]
    partitions = [int(p) for p in args.scaling_partitions.split(',')]
    configs = [(4, k) for k in keys] + [(p, keys[0]) for p in partitions if p != 4]
    facts = machine_facts()
    cluster = start_cluster(run, max(p for p, _ in configs), args)
    facts['mariadb'] = mariadb_facts(cluster)
    db_pids = lambda: [s.pid for s in cluster if s.pid]
    row = next(r for r in main_rows() if r.name == 'C-one')
    list_row = next(r for r in main_rows() if r.name == 'list')
    results = []

    hello = start_server(run, 'hello', write_sqlite_config(run), args, app='hello:application')
    hello_row = next(r for r in main_rows() if r.name == 'hello')
    measured = measure_wrk(run, args, hello_row, Target(hello.url + '/', lambda: process_tree(hello.pid), db_pids))
    measured.update(label='hello world', partitions=None, keys=None, load_s=None, nrw='')
    results.append(measured)
    hello.stop()

    for count, nkeys in configs:
        database = 'kvbench_%dp_%dk' % (count, nkeys // 1000)
        config_path, info = write_store_config(run, cluster, database, count, name='%s.cfg' % database)
        log('%d partitions: loading %d keys of 1 KiB', count, nkeys)
        seconds = bulk_load(config_path, BUCKET, nkeys, KIB)
        log('loaded in %.1f s (%.0f keys/s, %.0f rows/s)', seconds, nkeys / seconds,
            nkeys * info['replicas'] / seconds)
        store = start_server(run, 'store-%s' % database, config_path, args)
        env = {'BENCH_KEYS': str(nkeys), 'BENCH_SCRAMBLE': str(scramble_multiplier(nkeys)),
               'BENCH_THETA': str(THETA)}
        measured = measure_wrk(run, args, row, Target(store.url + '/', lambda: process_tree(store.pid), db_pids),
                               env)
        measured.update(label='GET r=1, %d partitions, %s keys' % (count, '{:,}'.format(nkeys)),
                        partitions=count, keys=nkeys, load_s=seconds,
                        nrw='%d/%d/%d' % (info['replicas'], info['r'], info['w']))
        results.append(measured)
        if count == 4 and nkeys == max(keys):
            measured = measure_wrk(run, args, list_row, Target(store.url + '/', lambda: process_tree(store.pid),
                                                               db_pids), env, connections=1)
            measured.update(label='a page of 1000 keys (GET /buckets/bench/keys?limit=1000), one client, '
                                  '%d partitions, %s keys' % (count, '{:,}'.format(nkeys)),
                            partitions=count, keys=nkeys, load_s=None,
                            nrw='%d/%d/%d' % (info['replicas'], info['r'], info['w']))
            results.append(measured)
        store.stop()
        drop_database(cluster, database, count)

    hello_rps = results[0]['rps']
    lines = ['# kvstore benchmark: scaling of GET r=1', '',
             'Written by `bench/run.py %s`. The same zipfian GET r=one workload (1 KiB values) with more '
             'keys and with more partitions (all servers on this one machine); with the most keys, also '
             'the latency of a page of 1000 keys for one client (wrk -c1).' % ' '.join(sys.argv[1:]), '',
             '| configuration | N/R/W | keys | load s (keys/s) | req/s | p50 ms | p99 ms | p99.9 ms | errors '
             '| CPU ms/req (server + db) | server | db | worker split | wrk CPU | req/s ÷ hello |',
             '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']
    for r in results:
        load = '%.1f (%s)' % (r['load_s'], '{:,.0f}'.format(r['keys'] / r['load_s'])) if r['load_s'] else '–'
        lines.append('| %s%s | %s | %s | %s | %s | %s | %s | %s | %d | **%s** | %s | %s | %s | %.0f%% | %s |' % (
            r['label'], (' †' if r['disturbed'] else '') + (' ‡' if r['one_worker'] else ''), r['nrw'] or '–',
            '{:,}'.format(r['keys']) if r['keys'] else '–', load, fmt(r['rps'], 0), fmt(r['p50_ms']),
            fmt(r['p99_ms']), fmt(r['p999_ms']), r['errors'], fmt(r['cpu_ms_per_req'], 3),
            fmt(r['server_ms_per_req'], 3), fmt(r['db_ms_per_req'], 3),
            '/'.join(str(x) for x in r['split']) if r.get('split') else '–', r['wrk_cpu_pct'] or 0,
            ratio(r['rps'], hello_rps) if r is not results[0] else '–'))
    settings = {
        'rows': '%d s each after a %d s warm-up; wrk -t1 -c%d, pinned to CPU %s'
                % (args.duration, args.warmup, args.connections, args.wrk_cpu),
        'store': '%s; N = min(3, partitions), R = W = quorum; 2 partitions means N=2' % server_setting(args),
        'load': 'bulk_load: the engine renders the rows (SQLEngine._store), batched multi-row INSERTs, '
                'one thread per partition',
    }
    lines += ['', LEGEND, facts_section(facts, settings)]
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, 'scaling.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(RESULTS_DIR, 'scaling.json'), 'w') as f:
        json.dump(dict(facts=facts, settings=settings, results=results), f, indent=1)
    plot(results, os.path.join(RESULTS_DIR, 'scaling.png'), 'kvstore GET r=1 scaling, %s' % facts['date'][:10],
         label=lambda r: r['label'])
    log('wrote %s', os.path.join(RESULTS_DIR, 'scaling.md'))
    print('\n'.join(lines[4:4 + len(results) + 2]))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--duration', type=int, default=10, help='seconds per row (default 10)')
    parser.add_argument('--connections', type=int, default=32, help='wrk connections (default 32)')
    parser.add_argument('--keys', type=int, default=10000, help='keys of 1 KiB (default 10000)')
    parser.add_argument('--big-keys', type=int, default=64, help='keys of 1 MiB (default 64)')
    parser.add_argument('--quick', action='store_true', help='2 s rows and 1 s warm-ups: a smoke run')
    parser.add_argument('--only', action='append', metavar='ROWNAME',
                        help='only these rows (comma-separated, shell patterns: --only "C-*,etcd-C")')
    parser.add_argument('--scaling', action='store_true',
                        help='GET r=1 with 10k and 1M keys (4 partitions) and with 2, 4, 8 partitions')
    parser.add_argument('--scaling-keys', default='10000,1000000')
    parser.add_argument('--scaling-partitions', default='2,4,8')
    parser.add_argument('--server', choices=('uwsgi', 'gunicorn'), default='uwsgi',
                        help='uwsgi: serve.py, as make run does (default); gunicorn: gthread, for comparison')
    parser.add_argument('--workers', type=int, default=4, help='WORKERS: worker processes (default 4)')
    parser.add_argument('--threads', type=int, default=4, help='THREADS: threads per worker (default 4)')
    parser.add_argument('--warmup', type=int, default=2, help='seconds of unmeasured load before a row')
    parser.add_argument('--buffer-pool', default='1G', help='innodb_buffer_pool_size of each server')
    parser.add_argument('--retries', type=int, default=2,
                        help='runs again a row that other processes disturbed or that one '
                             'worker served alone (default: up to twice)')
    parser.add_argument('--quiet-wait', type=int, default=20,
                        help='seconds to wait for other processes to calm down before a row')
    parser.add_argument('--wrk-cpu', default=str((os.cpu_count() or 1) - 1),
                        help='the CPU wrk is pinned to (default the last; "none" to not pin)')
    parser.add_argument('--merge', action='store_true',
                        help='keep the rows of the last results.json that this run does not measure '
                             '(to measure disturbed rows again: --only ROWS --merge)')
    parser.add_argument('--profile', nargs='?', const='C-one', metavar='ROWNAME',
                        help='after the rows, py-spy the store\'s workers under a row\'s load '
                             '(default C-one, the GET path): bench/results/profile.svg')
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.quiet_wait = 2, 1, 5
    if args.wrk_cpu == 'none' or not shutil.which('taskset'):
        args.wrk_cpu = None
    if args.keys < 2 or args.big_keys < 2:
        parser.error('--keys and --big-keys must be at least 2')
    return args


def check_tools(args):
    missing = [tool for tool in ('wrk', 'etcd') if not shutil.which(tool)]
    if args.scaling:
        missing = [t for t in missing if t != 'etcd']
    if missing:
        raise BenchError('%s not found: `make bench` installs them (apt-get install wrk etcd-server)'
                         % ' and '.join(missing))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    # Before the harness looks: it leaves a handler already set in place.
    # Ctrl-C is KeyboardInterrupt even when started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    run = None
    status = 0
    try:
        check_tools(args)
        run = Run()
        if args.scaling:
            scaling_run(run, args)
        else:
            main_run(run, args)
    except KeyboardInterrupt:
        log('interrupted: cleaning up')
        status = 130
    except BenchError as e:
        log('failed: %s', e)
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if run is not None:
            run.close()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    return status


if __name__ == '__main__':
    sys.exit(main())
