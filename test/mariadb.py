"""Private MariaDB servers for the test suite.

Every test that needs a database talks to a real ``mariadbd`` that this module
starts in a temporary directory, on its own TCP port on 127.0.0.1, with the
user ``root`` and an empty password.  Nothing here depends on the project
itself; the only third-party dependency is PyMySQL.

Typical use::

    from test.mariadb import shared_cluster

    class MyTest(unittest.TestCase):
        @classmethod
        def setUpClass(cls):
            cls.cluster = shared_cluster(4)      # started once per process

        def test_something(self):
            server = self.cluster[0]
            conn = server.connect()
            ...

A test may ``kill()``, ``stop()`` or ``pause()`` a server of the shared
cluster; the next call to ``shared_cluster()`` gives it back (restarts or
resumes it), and a test should still ``restart()``/``resume()`` what it broke
when it is done with it.  No ``mariadbd`` outlives the Python process: they are
killed at exit (``atexit``), on SIGTERM/SIGHUP, and servers left behind by a
process that was itself SIGKILLed are reaped the next time a cluster is made.

This module is the cluster; one server is ``mariadb_server.py``, the ports and
the cleanup ``mariadb_processes.py``.  Import the names of ``__all__`` from here.
"""

import atexit
import os
import shutil
import tempfile
import threading

from test.mariadb_processes import (TEMP_PREFIX, install_signal_handlers, kill_all_servers, live_clusters,
                                    reap_stale_dirs, release_port, stop_all_clusters)
from test.mariadb_server import MariaDBError, MariaDBServer, find_binary, mariadbd_available

__all__ = [
    'MariaDBServer',
    'MariaDBCluster',
    'MariaDBError',
    'shared_cluster',
    'mariadbd_available',
    'find_binary',
]


class MariaDBCluster(object):
    """``count`` private servers named p1..pN in one temporary directory."""

    def __init__(self, count=4, options=()):
        """options: server options beyond the harness's (see MariaDBServer)."""
        if count < 1:
            raise ValueError('count must be at least 1')
        reap_stale_dirs()
        self.base_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        with open(os.path.join(self.base_dir, 'owner.pid'), 'w') as f:
            f.write('%d\n' % os.getpid())
        self.servers = [MariaDBServer(self.base_dir, 'p%d' % (i + 1), options)
                        for i in range(count)]
        live_clusters.add(self)

    def __getitem__(self, index):
        return self.servers[index]

    def __len__(self):
        return len(self.servers)

    def __iter__(self):
        return iter(self.servers)

    def __repr__(self):
        return '<MariaDBCluster %s %r>' % (self.base_dir, self.servers)

    def _parallel(self, method, servers):
        errors = []

        def run(server):
            try:
                getattr(server, method)()
            except BaseException as exc:  # reported below
                errors.append((server, exc))

        threads = [threading.Thread(target=run, args=(s,), daemon=True,
                                    name='mariadb-%s-%s' % (method, s.name))
                   for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise MariaDBError('; '.join('%s: %s' % (s.name, e) for s, e in errors))

    def start(self):
        """Start every server that is not running, in parallel; resume
        paused ones."""
        # Signal handlers can only be set from the main thread.
        install_signal_handlers()
        for server in self.servers:
            if server.is_paused():
                server.resume()
        pending = [s for s in self.servers if not s.is_running()]
        if pending:
            self._parallel('start', pending)
        return self

    def ensure_running(self):
        """Give back every server a test broke: resume, restart."""
        return self.start()

    def stop(self, graceful=True):
        """Stop every server and remove the temporary directory."""
        try:
            if graceful:
                self._parallel('stop', [s for s in self.servers if s.is_running()])
        finally:
            for server in self.servers:
                server.kill()
                release_port(server.port)
                if not server.socket.startswith(self.base_dir):
                    try:
                        os.unlink(server.socket)
                    except OSError:
                        pass
            shutil.rmtree(self.base_dir, ignore_errors=True)
            live_clusters.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


_shared_lock = threading.Lock()
_shared = {}


def shared_cluster(count=4):
    """The process-wide cluster of ``count`` servers, started on first use.

    There is one such cluster per distinct ``count``.  Before returning it,
    every server is made to run again: paused ones are resumed, killed or
    stopped ones restarted on their port with their data.  It is stopped at
    process exit.
    """
    with _shared_lock:
        cluster = _shared.get(count)
        if cluster is None:
            cluster = MariaDBCluster(count)
            _shared[count] = cluster
        try:
            cluster.start()
        except Exception:
            # Do not hand out a broken cluster; the next call starts afresh.
            cluster.stop(graceful=False)
            del _shared[count]
            raise
        return cluster


@atexit.register
def _atexit_cleanup():
    with _shared_lock:
        shared = list(_shared.values())
        _shared.clear()
    for cluster in shared:
        try:
            # The data is thrown away: no need for a clean shutdown.
            cluster.stop(graceful=False)
        except Exception:  # pragma: no cover
            pass
    stop_all_clusters()
    kill_all_servers()
