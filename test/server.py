"""The real server for tests: serve.py (Granian) started the way `make run`
starts it, in a process group of its own, over a configuration of the test's."""
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from test.support import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def serve_command():
    """`make run`'s command, with the Python that runs the tests."""
    return [sys.executable, os.path.join(REPO, 'serve.py')]


def pid_alive(pid):
    """A process that exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def children(pid):
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(entry))
    return sorted(found)


class StoreServer:
    """serve.py's master and its workers.

    configuration: the text of the store's configuration file, written with
    the server's data under a temporary directory (its working directory's
    relative paths, such as data/p1.sqlite3, land there).
    """

    def __init__(self, configuration, workers=2, threads=8, environment=None):
        self.directory = tempfile.mkdtemp(prefix='kvstore-server-')
        self.config_path = os.path.join(self.directory, 'configuration.cfg')
        with open(self.config_path, 'w') as f:
            f.write(configuration)
        self.port = free_port()
        self.log_path = os.path.join(self.directory, 'server.log')
        self.workers, self.threads = workers, threads
        self.environment = environment or {}   # more of serve.py's environment (ACCESS_LOG)
        self.process = None
        self.pids = set()

    @classmethod
    def running(cls, configuration, **settings):
        """A started server; one that fails to start is stopped and removed."""
        server = cls(configuration, **settings)
        try:
            server.start()
        except BaseException:
            server.stop()
            server.cleanup()
            raise
        return server

    def start(self):
        # Tests run as root on CI; serve.py then wants to be told which user to be.
        env = dict(os.environ, RUN_AS=os.environ.get('RUN_AS', 'root'), **self.environment)
        env.update(STORE_CONFIG=self.config_path, BIND='127.0.0.1:%d' % self.port,
                   WORKERS=str(self.workers), THREADS=str(self.threads))
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                serve_command(), cwd=self.directory, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids.add(self.process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError('serve.py exited with %s before accepting connections:\n%s'
                                     % (self.process.returncode, self.log()))
            if self.answers() and len(self.worker_pids()) == self.workers and self.apps_loaded() >= self.workers:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError('serve.py did not answer within %d s:\n%s' % (START_TIMEOUT, self.log()))
            time.sleep(0.05)

    def apps_loaded(self):
        """How many workers have loaded the application (serve.py logs each).
        A SIGTERM while one is still loading makes it wait for the load."""
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().count(b'kvstore.serve INFO worker ready')
        except OSError:
            return 0

    def answers(self):
        conn = self.connect()
        try:
            conn.request('GET', '/health')   # needs no token, where tokens are configured
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def worker_pids(self):
        """The worker processes that are running now: the master's children."""
        pids = children(self.process.pid)
        self.pids.update(pids)
        return [pid for pid in pids if pid_alive(pid)]

    def served(self):
        """{worker pid: requests it has answered}, from the access log (ACCESS_LOG)."""
        counts = {}
        with open(self.log_path, encoding='utf-8', errors='replace') as f:
            for line in f:
                if ' granian.access ' in line:
                    pid = int(line.split('[', 1)[1].split(']', 1)[0])
                    counts[pid] = counts.get(pid, 0) + 1
        return counts

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s.  Returns (graceful, pids still alive)."""
        graceful = True
        if self.process is None:
            return graceful, []
        if self.process.poll() is None:
            self.worker_pids()
            # As a supervisor should: the master stops its workers itself.
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                graceful = False
        # Whatever is left of the group (a worker the master did not reap) goes too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(pid) for pid in self.pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        return graceful, [pid for pid in self.pids if pid_alive(pid)]

    def cleanup(self):
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, encoding='utf-8', errors='replace') as f:
                return f.read()[-4000:]
        except OSError:
            return ''

    def connect(self, timeout=10):
        return http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)

