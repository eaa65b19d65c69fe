"""What the test harness starts and must not leave behind: the ports its
servers take, the servers and clusters running, which are killed at exit or on
SIGTERM/SIGHUP, and the reaping of servers a test process that was SIGKILLed
left behind.  Used by mariadb_server.py and mariadb.py.
"""

import os
import random
import shutil
import signal
import socket
import tempfile
import threading

from kvstore.coordinator.workers import pid_alive   # noqa: F401 (bench/servers.py and the harness use it)

TEMP_PREFIX = 'kvstore-mariadb-'


# ---------------------------------------------------------------------------
# Ports

_ports_lock = threading.Lock()
_ports_taken = set()


def _port_is_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(('127.0.0.1', port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def pick_port():
    """A free port on 127.0.0.1, below the kernel's ephemeral range.

    Ports from the ephemeral range could be handed to some outgoing
    connection while a server is down, and then the server could not come
    back on its port; so pick below it.
    """
    low = 32768
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    top = max(low - 1, 2000)
    bottom = max(1025, min(15000, top - 1000))
    with _ports_lock:
        for _ in range(200):
            port = random.randint(bottom, top)
            if port not in _ports_taken and _port_is_free(port):
                _ports_taken.add(port)
                return port
        # Fall back on whatever the kernel gives.
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
            s.close()
            if port not in _ports_taken:
                _ports_taken.add(port)
                return port


def release_port(port):
    with _ports_lock:
        _ports_taken.discard(port)


# ---------------------------------------------------------------------------
# Bookkeeping of every server and cluster started by this process, for cleanup.

class _Started:
    """What this process started and has not cleaned up yet, shared by threads
    (and the signal handler: a reentrant lock)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._items = set()

    def add(self, item):
        with self._lock:
            self._items.add(item)

    def discard(self, item):
        with self._lock:
            self._items.discard(item)

    def all(self):
        with self._lock:
            return list(self._items)


live_servers = _Started()
live_clusters = _Started()


def kill_all_servers():
    """Kill every mariadbd this process started and that still runs."""
    for server in live_servers.all():
        try:
            server.kill()
        except Exception:  # pragma: no cover - best effort at exit
            pass


def stop_all_clusters():
    for cluster in live_clusters.all():
        try:
            cluster.stop(graceful=False)
        except Exception:  # pragma: no cover - best effort at exit
            pass


_previous_handlers = {}


def _on_fatal_signal(signum, frame):
    kill_all_servers()
    stop_all_clusters()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers():
    """Kill our servers on SIGTERM/SIGHUP too (atexit does not run then).

    Only from the main thread, and only where nobody set a handler yet.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signum in _previous_handlers:
            continue
        try:
            current = signal.getsignal(signum)
            if current not in (signal.SIG_DFL, None):
                _previous_handlers[signum] = current
                continue
            _previous_handlers[signum] = current
            signal.signal(signum, _on_fatal_signal)
        except (ValueError, OSError):  # pragma: no cover
            pass


def reap_stale_dirs():
    """Kill servers left by an earlier test process that died hard.

    Each cluster directory records the pid of the Python process that owns
    it.  When that process is gone, any mariadbd still serving a datadir in
    that directory is an orphan of ours: kill it (checking by its command
    line that it is one) and remove the directory.
    """
    tmp = tempfile.gettempdir()
    try:
        entries = os.listdir(tmp)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(TEMP_PREFIX):
            continue
        base = os.path.join(tmp, entry)
        owner_file = os.path.join(base, 'owner.pid')
        try:
            with open(owner_file) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or pid_alive(owner):
            continue
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            pid_file = os.path.join(base, name, 'mariadbd.pid')
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    cmdline = f.read().decode('utf-8', 'replace')
            except (OSError, ValueError):
                continue
            if os.path.join(base, name, 'data') in cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)
