"""What a run starts, and stops again whatever happens: private mariadbd
servers (test/mariadb.py), the store under Granian as `make run` serves it
(or under gunicorn gthread), the hello world and the floor under the same
settings, and etcd.  A run SIGKILLed midway is cleaned up by the next one."""
import base64
import configparser
import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench.common import HERE, MIB, ROOT, SERVER_LOG_DIR, TEMP_PREFIX, KIB, BenchError, log


# -- processes and cleanup -----------------------------------------------------------

def stat_fields(pid):
    """/proc/<pid>/stat fields from the state on (index 0 = field 3)."""
    with open('/proc/%d/stat' % pid, 'rb') as f:
        data = f.read().decode('ascii', 'replace')
    return data[data.rindex(')') + 2:].split()


def start_time(pid):
    try:
        return int(stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def _kill_recorded(base):
    """SIGKILL the process groups an earlier run recorded in base/pids, if
    they are still the processes it started."""
    try:
        with open(os.path.join(base, 'pids')) as f:
            recorded = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except (OSError, ValueError):
        recorded = []
    for pid, started in recorded:
        if start_time(pid) == started:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                ppid = int(stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def reap_stale_runs():
    """Kill what a run that died without cleaning up (SIGKILL) left behind."""
    from test.mariadb_processes import pid_alive, reap_stale_dirs
    reap_stale_dirs()  # the harness's servers whose owner is gone
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
        _kill_recorded(base)
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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # workers that outlived the master
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        # The server's log outlives the run, for errors a row counted (gitignored).
        with contextlib.suppress(OSError):
            os.makedirs(SERVER_LOG_DIR, exist_ok=True)
            shutil.copyfile(self.log_path, os.path.join(SERVER_LOG_DIR, os.path.basename(self.log_path)))

    def tail(self, lines=20):
        try:
            with open(self.log_path, 'rb') as f:
                return '\n'.join(f.read().decode('utf-8', 'replace').splitlines()[-lines:])
        except OSError:
            return ''


def free_port():
    """A free TCP port on 127.0.0.1, below the ephemeral range: the harness's."""
    from test.mariadb_processes import pick_port
    return pick_port()


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


# -- MariaDB ------------------------------------------------------------------------------

def parse_size(text):
    text = str(text).strip().upper()
    units = {'K': KIB, 'M': MIB, 'G': 1024 * MIB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _size_for_benchmarking(server, pool):
    """The harness sizes servers for quick tests (32 MiB buffer pool, 16 MiB
    redo log); a benchmark wants the data set in memory, as production would."""
    conn = server.connect(autocommit=True)
    try:
        with conn.cursor() as cursor:
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


# The durability docs/OPERATIONS.md asks of production, which the harness
# trades for the tests' speed (MariaDB's defaults): each commit's redo log on
# disk before the commit returns; pages written twice, so that a page torn by
# a power loss is recovered.  No binary log (the store needs none; with one,
# sync_binlog = 1 too).
PRODUCTION_OPTIONS = ('--innodb-flush-log-at-trx-commit=1', '--innodb-doublewrite=1')


def start_cluster(run, count, args):
    """count private mariadbd servers (test/mariadb.py), sized for benchmarking."""
    from test.mariadb import MariaDBCluster
    log('starting %d private mariadbd servers', count)
    cluster = MariaDBCluster(count, PRODUCTION_OPTIONS)
    run.defer(cluster.stop, False)
    cluster.start()
    pool = parse_size(args.buffer_pool)
    for server in cluster:
        _size_for_benchmarking(server, pool)
    return cluster


def _query_servers(servers, statement):
    """Run statement on each server; the first row of each answer."""
    answers = []
    for server in servers:
        conn = server.connect(autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                answers.append(cursor.fetchone())
        finally:
            conn.close()
    return answers


# The status counters a row reads before and after: InnoDB deadlocks (each
# one a transaction the store retried), statements (Questions: every
# statement a client sent, each of a multi-statement's counted), commits
# (COMMIT statements: an autocommit write is none) and fsyncs (InnoDB's, of
# its log and data files: what durability costs, autocommit writes included).
STATUS_COUNTERS = ('Innodb_deadlocks', 'Questions', 'Com_commit', 'Innodb_data_fsyncs')


def mariadb_status(cluster, count):
    """{counter of STATUS_COUNTERS: its value since start}, summed over the
    first count servers, less the statements these readings cost (a
    connection's own set-up statements and the query)."""
    totals = _read_status(cluster, count)
    calibrating = count not in _STATUS_COST
    if calibrating:
        _STATUS_COST[count] = _read_status(cluster, count)['Questions'] - totals['Questions']
    _STATUS_READS[count] = _STATUS_READS.get(count, 0) + 1
    totals['Questions'] -= _STATUS_READS[count] * _STATUS_COST[count]
    _STATUS_READS[count] += calibrating   # the calibration's own reading
    return totals


_STATUS_COST, _STATUS_READS = {}, {}   # by count: statements one reading costs; readings so far


def _read_status(cluster, count):
    answers = _query_servers(cluster.servers[:count], "SELECT GROUP_CONCAT(VARIABLE_VALUE ORDER BY "
                             "FIELD(VARIABLE_NAME, %s)) FROM information_schema.GLOBAL_STATUS WHERE "
                             "VARIABLE_NAME IN (%s)" % ((', '.join("'%s'" % c.upper() for c in STATUS_COUNTERS),) * 2))
    totals = dict.fromkeys(STATUS_COUNTERS, 0)
    for (values,) in answers:
        for name, value in zip(STATUS_COUNTERS, (values.decode() if isinstance(values, bytes) else values).split(',')):
            totals[name] += int(value)
    return totals


def mariadb_facts(cluster):
    [(version, pool, logsize, flush, doublewrite, log_bin, packet)] = _query_servers(
        cluster.servers[:1], 'SELECT VERSION(), @@innodb_buffer_pool_size, @@innodb_log_file_size, '
        '@@innodb_flush_log_at_trx_commit, @@innodb_doublewrite, @@log_bin, @@max_allowed_packet')
    return dict(version=version, buffer_pool=pool, log_file_size=logsize, flush_log_at_trx_commit=flush,
                doublewrite=doublewrite, log_bin=log_bin, max_allowed_packet=packet)


def drop_database(cluster, database, count):
    _query_servers(cluster.servers[:count], 'DROP DATABASE IF EXISTS `%s`' % database)


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
    return 'python serve.py (Granian), WORKERS=%d THREADS=%d' % (args.workers, args.threads)


def start_server(run, name, config_path, args, app=None, probe='/'):
    """The store as `make run` serves it (serve.py: Granian), or under gunicorn
    gthread (--server gunicorn) for comparison, with the settings in the env.

    XDG_RUNTIME_DIR is pointed at the run's temporary directory, so that
    gunicorn's control socket does not replace that of another gunicorn on
    this machine.  app (the hello world, the floor) is given on the command line.
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
