"""One private mariadbd for the test suite (see mariadb.py): installed in a
directory of its own, started on its own port on 127.0.0.1 with the user
``root`` and an empty password, stopped, killed, paused and restarted as a test
needs.  It also has the store's user (``store_user``), with exactly the grants
docs/OPERATIONS.md gives (mariadb_grants.py), on every ``test_`` database.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pymysql

from test.mariadb_grants import store_account, store_user_sql
from test.mariadb_processes import TEMP_PREFIX, install_signal_handlers, live_servers, pick_port, release_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0

# Options that make a server small and quick to start, for tests only.
FAST_OPTIONS = [
    '--innodb-buffer-pool-size=32M',
    '--innodb-log-file-size=16M',
    '--innodb-log-buffer-size=4M',
    '--innodb-flush-log-at-trx-commit=2',
    '--innodb-doublewrite=0',
    '--innodb-use-native-aio=0',
    '--innodb-temp-data-file-path=ibtmp1:1M:autoextend',
    '--innodb-buffer-pool-dump-at-shutdown=0',
    '--innodb-buffer-pool-load-at-startup=0',
    '--skip-performance-schema',
    '--skip-log-bin',
    '--key-buffer-size=1M',
    '--aria-pagecache-buffer-size=8M',
]

# Options that make the server behave like a stock Debian install (whose
# /etc/mysql config --no-defaults skips) and accept a reasonable load.
SERVER_OPTIONS = [
    '--character-set-server=utf8mb4',
    '--collation-server=utf8mb4_general_ci',
    '--max-connections=500',
]

# Run at every start: make sure root can log in over TCP from 127.0.0.1 with
# an empty password (with --skip-name-resolve, 'root'@'localhost' only
# matches unix-socket connections).
INIT_SQL = """\
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION;
""" + store_user_sql()


class MariaDBError(RuntimeError):
    """A private server could not be installed, started or stopped."""


def find_binary(name):
    """Absolute path of ``name`` on PATH or in /usr/sbin, or None."""
    path = shutil.which(name)
    if path:
        return path
    for directory in ('/usr/sbin', '/usr/local/sbin', '/usr/bin', '/usr/local/bin'):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def mariadbd_available():
    """True when a MariaDB server binary can be found."""
    return find_binary('mariadbd') is not None


def _install_db_binary():
    return find_binary('mariadb-install-db') or find_binary('mysql_install_db')


def _tail(path, lines=30):
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode('utf-8', 'replace')
    except OSError as exc:
        return '(cannot read %s: %s)' % (path, exc)
    return '\n'.join(data.splitlines()[-lines:])


def install_datadir(server):
    """mariadb-install-db: a new datadir for server (tried twice), then its
    installed marker; MariaDBError when that fails."""
    install_db = _install_db_binary()
    mariadbd = find_binary('mariadbd')
    if not install_db or not mariadbd:
        raise MariaDBError(
            'MariaDB server not found: install mariadb-server 10.6+ '
            '(mariadbd and mariadb-install-db), e.g. "make mariadb"')
    cmd = [
        install_db,
        '--no-defaults',
        '--user=root',
        '--datadir=' + server.datadir,
        '--tmpdir=' + server.tmpdir,
        '--auth-root-authentication-method=normal',
        '--skip-test-db',
        '--skip-name-resolve',
        # the rest is handed to the bootstrap mariadbd:
        '--innodb-buffer-pool-size=32M',
        '--innodb-log-file-size=16M',
        '--innodb-flush-log-at-trx-commit=2',
        '--innodb-doublewrite=0',
        '--innodb-use-native-aio=0',
    ] + server.options
    bindir = os.path.dirname(mariadbd)
    env = dict(os.environ)
    # mariadb-install-db looks for mariadbd in its basedir; make sure it
    # also finds it when /usr/sbin is not on PATH.
    env['PATH'] = env.get('PATH', '') + os.pathsep + bindir
    for attempt in range(2):
        if os.path.isdir(server.datadir):
            shutil.rmtree(server.datadir)
        os.makedirs(server.tmpdir, exist_ok=True)
        with open(server.install_log, 'ab') as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env,
                                 cwd=server.dir)
        if rc == 0 and os.path.isdir(os.path.join(server.datadir, 'mysql')):
            with open(server.installed_marker, 'w') as f:
                f.write('ok\n')
            return
    raise MariaDBError('mariadb-install-db failed for %s (exit %d):\n%s'
                       % (server.name, rc, _tail(server.install_log)))


class MariaDBServer(object):
    """One private mariadbd, listening on 127.0.0.1:<port>.

    Its files live in ``base_dir/name/``: ``data/`` (the datadir),
    ``tmp/``, ``mariadbd.sock``, ``mariadbd.pid``, ``error.log`` (the
    server's error log), ``install.log``, ``console.log`` (stdout/stderr)
    and ``init.sql``.
    """

    def __init__(self, base_dir, name, options=()):
        """options: extra server options, given to the install and every start
        (e.g. a fixed-size tablespace for a disk-full test)."""
        self.name = name
        self.options = list(options)
        self.base_dir = os.path.abspath(base_dir)
        self.dir = os.path.join(self.base_dir, name)
        self.datadir = os.path.join(self.dir, 'data')
        self.pid_file = os.path.join(self.dir, 'mariadbd.pid')
        self.error_log = os.path.join(self.dir, 'error.log')
        self.console_log = os.path.join(self.dir, 'console.log')
        self.install_log = os.path.join(self.dir, 'install.log')
        self.init_file = os.path.join(self.dir, 'init.sql')
        # A private tmpdir: bootstraps running side by side in a shared /tmp
        # trip over each other's temporary tables ("Unknown table
        # 'mysql.tmp_user_sys'").
        self.tmpdir = os.path.join(self.dir, 'tmp')
        self.installed_marker = os.path.join(self.dir, 'installed')
        self.socket = os.path.join(self.dir, 'mariadbd.sock')
        if len(self.socket) > 100:  # sun_path is limited to 108 bytes
            self.socket = os.path.join(
                tempfile.gettempdir(),
                '%s%d-%s.sock' % (TEMP_PREFIX, os.getpid(), name))
        self._port = pick_port()
        self._proc = None
        self._paused = False
        self._started_once = False
        self._lock = threading.RLock()

    # -- connection parameters ------------------------------------------------

    @property
    def host(self):
        return '127.0.0.1'

    @property
    def port(self):
        return self._port

    @property
    def user(self):
        return 'root'

    @property
    def password(self):
        return ''

    @property
    def store_user(self):
        """The store's user, as the documentation creates it (the tests'
        partitions connect as it; root is for the tests' own checks)."""
        return store_account()[0]

    @property
    def store_password(self):
        return store_account()[1]

    @property
    def pid(self):
        """Pid of the running mariadbd, or None."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc.pid
        return None

    def connection_params(self):
        """host/port/user/password as a dict (for pymysql.connect(**...))."""
        return {'host': self.host, 'port': self.port,
                'user': self.user, 'password': self.password}

    def connect(self, **kwargs):
        """A new PyMySQL connection to this server over TCP, without TLS.

        Keyword arguments are passed on to ``pymysql.connect`` (e.g.
        ``database``, ``autocommit``, ``connect_timeout``, ``read_timeout``).
        """
        params = self.connection_params()
        params.setdefault('ssl_disabled', True)
        params.setdefault('charset', 'utf8mb4')
        params.update(kwargs)
        return pymysql.connect(**params)

    # -- state ----------------------------------------------------------------

    def is_running(self):
        """True while the process exists (paused or not)."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    def is_paused(self):
        return self.is_running() and self._paused

    def __repr__(self):
        state = 'stopped'
        if self.is_running():
            state = 'paused' if self._paused else 'running'
        return '<MariaDBServer %s 127.0.0.1:%d %s>' % (self.name, self._port, state)

    # -- lifecycle ------------------------------------------------------------

    def _command(self):
        return [
            find_binary('mariadbd'),
            '--no-defaults',
            '--user=root',
            '--datadir=' + self.datadir,
            '--port=%d' % self._port,
            '--socket=' + self.socket,
            '--pid-file=' + self.pid_file,
            '--log-error=' + self.error_log,
            '--init-file=' + self.init_file,
            '--tmpdir=' + self.tmpdir,
            '--bind-address=127.0.0.1',
            '--skip-name-resolve',
        ] + FAST_OPTIONS + SERVER_OPTIONS + self.options

    def start(self, timeout=START_TIMEOUT):
        """Start the server (installing its datadir the first time) and wait
        until it accepts a TCP connection.  Does nothing if it runs."""
        with self._lock:
            if self.is_running():
                if self._paused:
                    self.resume()
                return self
            if not mariadbd_available():
                raise MariaDBError(
                    'mariadbd not found: install mariadb-server 10.6+ '
                    '(mariadbd and mariadb-install-db), e.g. "make mariadb"')
            os.makedirs(self.tmpdir, exist_ok=True)
            if not os.path.exists(self.installed_marker):
                install_datadir(self)
            with open(self.init_file, 'w') as f:
                f.write(INIT_SQL)
            attempts = 1 if self._started_once else 3
            for attempt in range(attempts):
                try:
                    self._launch(timeout)
                    break
                except MariaDBError:
                    # The first start may lose a race for its port: retry on
                    # another one.  Later starts must keep theirs.
                    if attempt + 1 < attempts and self._bind_failed():
                        release_port(self._port)
                        self._port = pick_port()
                        continue
                    raise
            self._started_once = True
            return self

    def _bind_failed(self):
        tail = _tail(self.error_log, 15)
        return 'Address already in use' in tail or "Can't start server" in tail

    def _launch(self, timeout):
        install_signal_handlers()
        # Start every error log afresh so that the tail shown on a failure
        # is about this start.
        if os.path.exists(self.error_log):
            os.replace(self.error_log, self.error_log + '.old')
        console = open(self.console_log, 'ab')
        try:
            self._proc = subprocess.Popen(
                self._command(), stdout=console, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True,
                close_fds=True)
        finally:
            console.close()
        self._paused = False
        live_servers.add(self)
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._forget()
                raise MariaDBError(
                    'mariadbd %s exited with %s while starting on port %d:\n%s'
                    % (self.name, rc, self._port, _tail(self.error_log)))
            try:
                conn = self.connect(connect_timeout=1, read_timeout=2,
                                    write_timeout=2)
                try:
                    with conn.cursor() as cur:
                        cur.execute('SELECT 1')
                finally:
                    conn.close()
                return
            except pymysql.MySQLError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.kill()
                raise MariaDBError(
                    'mariadbd %s did not accept connections on 127.0.0.1:%d '
                    'within %.0f s (last error: %r):\n%s'
                    % (self.name, self._port, timeout, last_error,
                       _tail(self.error_log)))
            time.sleep(0.05)

    def _forget(self):
        self._paused = False
        live_servers.discard(self)

    def _signal(self, signum):
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout=STOP_TIMEOUT):
        """Shut down gracefully (SIGTERM, wait); SIGKILL after ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._forget()
                return
            if self._paused:
                self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(KILL_TIMEOUT)
            self._forget()

    def kill(self):
        """SIGKILL the server (like a crash) and wait for it to be gone."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._signal(signal.SIGKILL)
                try:
                    proc.wait(KILL_TIMEOUT)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    raise MariaDBError('mariadbd %s (pid %d) survived SIGKILL'
                                       % (self.name, proc.pid))
            self._forget()

    def pause(self):
        """SIGSTOP: the server hangs (connections are accepted by the
        kernel but never answered) until resume()."""
        with self._lock:
            if not self._signal(signal.SIGSTOP):
                raise MariaDBError('mariadbd %s is not running' % self.name)
            self._paused = True

    def resume(self):
        """SIGCONT after pause()."""
        with self._lock:
            self._signal(signal.SIGCONT)
            self._paused = False

    def restart(self, timeout=START_TIMEOUT):
        """Start again on the same port and datadir.

        After kill() or stop() this just starts it; a running server is
        stopped gracefully first, a paused one resumed and stopped.
        """
        with self._lock:
            if self.is_running():
                self.stop()
            return self.start(timeout)

    def destroy(self):
        """Kill the server and remove its files."""
        self.kill()
        release_port(self._port)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.socket.startswith(self.dir):
            try:
                os.unlink(self.socket)
            except OSError:
                pass
