"""How a row is measured: load from wrk (or a PyMySQL query loop), CPU time
of the server's and the databases' processes from /proc before and after,
latency percentiles, whether other processes disturbed the row (and then
running it again), and py-spy profiles of the store's workers."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time

from bench.common import (BUCKET, DISTURBED_CORES, LUA_DIR, ONE_WORKER, QUIET_CORES, BenchError, log)
from bench.report import summarise_profile
from bench.servers import stat_fields
from bench.workloads import Zipfian, key_name

CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


# -- CPU accounting -----------------------------------------------------------------

def process_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        fields = stat_fields(pid)
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


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


def others_share(spent, ours):
    """Cores that processes none of ours (and the hypervisor) took, given
    what `ours` (CPU ms) of the machine's busy time was ours."""
    return (max(0.0, spent['machine'] - ours) + spent['steal']) / 1000.0 / spent['wall']


def other_cores(groups_fn, seconds=1.0):
    """Cores busy with processes that are none of ours, over `seconds`."""
    before = CPUSnapshot(groups_fn())
    time.sleep(seconds)
    spent = CPUSnapshot(groups_fn()).since(before)
    ours = sum(v for k, v in spent.items() if k not in ('machine', 'steal', 'wall') and not k.endswith('_each'))
    return others_share(spent, ours)


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


def process_split(each):
    """How the server's CPU divided among its busiest processes, in percent
    (the workers; a Granian or gunicorn worker keeps the connections it
    accepted)."""
    total = sum(each.values())
    if total <= 0 or len(each) < 2:
        return None
    shares = sorted((100.0 * ms / total for ms in each.values()), reverse=True)
    return [round(s) for s in shares if s >= 1]


def percentile(ordered, p):
    """The p-th percentile (nearest rank) of a sorted list."""
    return ordered[min(len(ordered) - 1, int(math.ceil(p / 100.0 * len(ordered))) - 1)]


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
    counters: callable = None  # () -> the databases' status counters so far (servers.mariadb_status)


def row_connections(args, row):
    """wrk's connections for a row: a quarter of them for 1 MiB values, an
    eighth for batches (each a hundred keys in flight)."""
    if row.per_request > 1:
        return max(1, args.connections // 8)
    return max(1, args.connections // 4) if row.big else args.connections


def _wrk_measured(row, connections, result, spent, wrk_ms, attempt):
    """A row's numbers from wrk's result and the CPU spent meanwhile."""
    requests = result['requests']
    seconds = result['duration_us'] / 1e6
    lat = result['latency_us']
    per_request = lambda ms: ms / requests if requests else None
    return dict(
        name=row.name, system=row.system, what=row.what, connections=connections,
        per_request=row.per_request, versus=row.versus,
        seconds=seconds, requests=requests, rps=requests / seconds if seconds else 0.0,
        p50_ms=lat['p50'] / 1000.0, p99_ms=lat['p99'] / 1000.0, p999_ms=lat['p999'] / 1000.0,
        mean_ms=lat['mean'] / 1000.0, max_ms=lat['max'] / 1000.0,
        errors=result['errors'] + sum(result['socket_errors'].values()),
        statuses=result['statuses'], socket_errors=result['socket_errors'],
        server_ms=spent['server'], db_ms=spent['db'],
        cpu_ms_per_req=per_request(spent['server'] + spent['db']),
        server_ms_per_req=per_request(spent['server']), db_ms_per_req=per_request(spent['db']),
        wrk_cpu_pct=100.0 * wrk_ms / 1000.0 / seconds if seconds else None,
        machine_cores=spent['machine'] / 1000.0 / spent['wall'],
        other_cores=others_share(spent, spent['server'] + spent['db'] + spent['self'] + wrk_ms),
        attempt=attempt, bytes=result['bytes'], split=process_split(spent['server_each']))


def counted(after, before, requests):
    """A row's deadlocks, and statements, commits and fsyncs per request,
    from the databases' status counters."""
    if after is None:
        return dict(deadlocks=None, statements_per_req=None, commits_per_req=None, fsyncs_per_req=None)
    delta = {name: after[name] - before[name] for name in after}
    per_request = lambda n: n / requests if requests else None
    return dict(deadlocks=delta['Innodb_deadlocks'], statements_per_req=per_request(delta['Questions']),
                commits_per_req=per_request(delta['Com_commit']),
                fsyncs_per_req=per_request(delta['Innodb_data_fsyncs']))


def _wrk_attempt(run, args, row, target, env, connections, attempt):
    """One measured wrk run of a row (after its warm-up), its numbers."""
    groups = lambda: {'server': target.server(), 'db': target.db()}
    wait_idle(lambda: target.server() + target.db())
    wait_quiet(groups, args.quiet_wait)
    if args.warmup:
        run_wrk(run, target.url, row.script, env, args.warmup, connections, args.wrk_cpu)
    counters_before = target.counters() if target.counters else None
    before = CPUSnapshot(groups())
    result, wrk_ms = run_wrk(run, target.url, row.script, env, args.duration, connections, args.wrk_cpu)
    spent = CPUSnapshot(groups()).since(before)
    measured = _wrk_measured(row, connections, result, spent, wrk_ms, attempt)
    measured.update(counted(target.counters() if target.counters else None, counters_before, measured['requests']))
    log('%-12s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  CPU %.3f ms/req '
        '(server %.3f, db %.3f)  wrk %.0f%%  others %.2f cores  statements/req %.2f  fsyncs/req %.2f  deadlocks %s',
        row.name, measured['rps'], measured['p50_ms'], measured['p99_ms'], measured['errors'],
        measured['cpu_ms_per_req'] or 0, measured['server_ms_per_req'] or 0,
        measured['db_ms_per_req'] or 0, measured['wrk_cpu_pct'] or 0, measured['other_cores'],
        measured['statements_per_req'] or 0, measured['fsyncs_per_req'] or 0, measured['deadlocks'])
    return measured


def measure_wrk(run, args, row, target, env_extra=None, connections=None):
    """A row under wrk; run again (up to --retries) while others disturb it or
    one worker serves it alone.  The least disturbed attempt."""
    connections = connections or row_connections(args, row)
    env = dict(row.env, **(env_extra or {}))
    attempts = []
    for attempt in range(1 + args.retries):
        measured = _wrk_attempt(run, args, row, target, env, connections, attempt + 1)
        attempts.append(measured)
        measured['disturbed'] = measured['other_cores'] > DISTURBED_CORES
        measured['one_worker'] = bool(row.system in ('store', 'hello', 'floor') and args.workers > 1 and connections > 1
                                      and measured['split'] and measured['split'][0] >= ONE_WORKER)
        if not measured['disturbed'] and not measured['one_worker']:
            break
        why = ('others (processes, steal) took %.2f cores' % measured['other_cores'] if measured['disturbed']
               else 'one worker served %d%% of the server CPU' % measured['split'][0])
        log('%s: %s: %s', row.name, why, 'running it again' if attempt < args.retries else 'keeping it, marked')
    return min(attempts, key=lambda m: (m['disturbed'], m['one_worker'], m['other_cores']))


# -- the PyMySQL reference ----------------------------------------------------------------

def _held_keys(config_path, keys, partition='p1'):
    """Zipfian keys (bytes) among those `partition` holds, without end."""
    from kvstore import configuration
    from kvstore.coordinator.ring import Ring

    config = configuration.load(config_path)
    ring = Ring.of(config)
    held = bytearray(keys)
    for index in range(keys):
        held[index] = partition in ring.preference_list(BUCKET, key_name(index), config.replicas)
    zipf = Zipfian(keys, seed=7)
    while True:
        index = zipf.next()
        if held[index]:
            yield key_name(index).encode()


def _query_loop(cursor, sql, keys, duration):
    """Run sql for `duration` seconds, a key each time; (sorted latencies in ns, errors)."""
    bucket = BUCKET.encode()
    latencies, errors = [], 0
    deadline = time.perf_counter() + duration
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        cursor.execute(sql, (bucket, next(keys)))
        found = cursor.fetchall()
        latencies.append(clock() - t0)
        if len(found) != 1:
            errors += 1
        if (len(latencies) & 63) == 0 and time.perf_counter() >= deadline:
            break
    latencies.sort()
    return latencies, errors


def _pymysql_attempt(args, row, cursor, sql, keys, groups, attempt):
    """One measured query loop (after its warm-up), its numbers."""
    wait_quiet(groups, args.quiet_wait)
    if args.warmup:
        _query_loop(cursor, sql, keys, args.warmup)
    before = CPUSnapshot(groups())
    client_before = time.thread_time()
    started = time.perf_counter()
    latencies, errors = _query_loop(cursor, sql, keys, args.duration)
    seconds = time.perf_counter() - started
    client_ms = (time.thread_time() - client_before) * 1000.0
    spent = CPUSnapshot(groups()).since(before)
    requests = len(latencies)
    other = others_share(spent, spent['db'] + spent['self'])
    measured = dict(
        name=row.name, system=row.system, what=row.what, connections=1, seconds=seconds,
        requests=requests, rps=requests / seconds, p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6, p999_ms=percentile(latencies, 99.9) / 1e6,
        mean_ms=sum(latencies) / requests / 1e6, max_ms=latencies[-1] / 1e6,
        errors=errors, statuses={}, socket_errors={}, server_ms=0.0, db_ms=spent['db'],
        cpu_ms_per_req=spent['db'] / requests, server_ms_per_req=None,
        db_ms_per_req=spent['db'] / requests, client_ms_per_req=client_ms / requests,
        wrk_cpu_pct=None, machine_cores=spent['machine'] / 1000.0 / spent['wall'],
        other_cores=other, attempt=attempt, bytes=0, disturbed=other > DISTURBED_CORES, one_worker=False)
    log('%-12s %8.0f q/s    p50 %7.2f ms  p99 %7.2f ms  errors %d  mariadbd %.3f ms/query, '
        'client %.3f ms/query  others %.2f cores', row.name, measured['rps'], measured['p50_ms'],
        measured['p99_ms'], errors, measured['db_ms_per_req'], measured['client_ms_per_req'], other)
    return measured


def measure_pymysql(args, row, cluster, config_path, database, groups_db):
    """Primary-key SELECTs of the engine's own read query, one connection, zipfian keys
    among those the first server holds."""
    import pymysql
    from kvstore.engines import COLUMNS

    server = cluster[0]
    keys = _held_keys(config_path, args.keys)
    sql = 'SELECT ' + COLUMNS + ' FROM objects WHERE bucket = %s AND key_name = %s'
    conn = pymysql.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           database=database, autocommit=True, charset='utf8mb4', ssl_disabled=True)
    groups = lambda: {'server': [], 'db': groups_db()}
    attempts = []
    try:
        cursor = conn.cursor()
        for attempt in range(1 + args.retries):
            measured = _pymysql_attempt(args, row, cursor, sql, keys, groups, attempt + 1)
            attempts.append(measured)
            if not measured['disturbed']:
                break
    finally:
        conn.close()
    return min(attempts, key=lambda m: m['other_cores'])


# -- profiling -------------------------------------------------------------------------------

def _py_spy():
    py_spy = os.path.join(os.path.dirname(sys.executable), 'py-spy')
    return py_spy if os.access(py_spy, os.X_OK) else shutil.which('py-spy')


def _finish_spies(spies):
    """Wait for the profilers; their error messages, if any failed."""
    errors = []
    for spy in spies:
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode:
            errors.append(err.decode('utf-8', 'replace')[-500:])
    return errors


def profile_store(run, args, row, target, master):
    """py-spy on every worker (--subprocesses) while `row` runs: a flame graph
    (profile.svg in the results) and collapsed stacks, summarised in results.md.

    --gil keeps the samples of the thread holding the GIL: where the workers' Python
    time goes; --nonblocking leaves the workers running at full speed."""
    py_spy = _py_spy()
    if not py_spy:
        log('py-spy not installed (pip install py-spy): no profile')
        return None
    seconds = max(5, args.duration)
    name = 'profile.svg' if row.name == 'C-one' else 'profile-%s.svg' % row.name
    raw = run.path('profile.txt')
    os.makedirs(args.results_dir, exist_ok=True)
    spies = []
    for fmt, out in (('flamegraph', os.path.join(args.results_dir, name)), ('raw', raw)):
        spies.append(subprocess.Popen([py_spy, 'record', '--pid', str(master), '--subprocesses',
                                       '--duration', str(seconds), '--rate', '200', '--nonblocking', '--gil',
                                       '--format', fmt, '-o', out],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True))
        run.track(spies[-1].pid)
    time.sleep(1)
    try:
        run_wrk(run, target.url, row.script, row.env, seconds + 1, row_connections(args, row), args.wrk_cpu)
    finally:
        errors = _finish_spies(spies)
    if errors or not os.path.exists(raw):
        log('py-spy failed: %s', ' | '.join(errors))
        return None
    summary = summarise_profile(raw)
    summary.update(row=row.name, svg=name)
    return summary
