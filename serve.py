#!/usr/bin/env python3
"""The production server (`make run`): the store under Granian.

Checks configuration.cfg once, then runs Granian (a Rust HTTP server built
on hyper) in this process as its master.  The master binds BIND and forks
WORKERS worker processes; each parses HTTP in Rust, holds its client
connections on an event loop and runs the store (web.py) in THREADS threads
(kvstore/http/gateway.py), each worker with its own connection pools and
gossip thread.  Each counts for GET /metrics in files of its own under the
run directory, which a scrape adds up (kvstore/metrics.py).
bench/results/stack.md has the numbers behind the choice of Granian.

Signals to the master: SIGTERM or SIGINT: stop taking connections, let the
requests under way finish (for up to STOP_SECONDS), then exit.  SIGHUP: read
the configuration again and check it; a bad one is logged and the workers
serving the old one go on; a good one starts new workers, one at a time, each
old one finishing its requests before it exits.

`python serve.py --check` checks the configuration and exits (0: good, 2: bad).

Environment: BIND (127.0.0.1:8080), WORKERS (4), THREADS (4), STORE_CONFIG,
RUN_AS (started as root: the user to run as, or root to stay root; required),
ACCESS_LOG (any value: log each request).
"""
import gc
import logging
import os
import pwd
import select
import shutil
import stat
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = 'the store'                              # what serve.py serves without an argument
METRICS_DIRECTORY = 'metrics'                    # in the run directory
METRICS_VARIABLE = 'PROMETHEUS_MULTIPROC_DIR'    # prometheus_client's
STOP_SECONDS = 10
MASTER = None                                    # the master's pid (workers are forked from it)
LOG_FORMAT = '%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s'
# Granian's access log, in the words test/test_framing.py reads.
ACCESS_FORMAT = '%(addr)s %(method)s %(path)s => %(status)d in %(dt_ms).1f ms (%(protocol)s %(status)d)'
log = logging.getLogger('kvstore.serve')


def store_application():
    """What each worker serves: the store, behind the gateway."""
    import controller
    application = controller.create_application()
    return gateway(application, application.datastore.config)


def gateway(application, config=None):
    """A WSGI application as the ASGI one Granian runs."""
    from kvstore.http import framing
    from kvstore.http.gateway import Gateway
    timeout, rate = (config.body_timeout, config.min_body_rate) if config else (5.0, 1024)
    served = Gateway(application, int(os.environ.get('THREADS', '4')), lambda: framing.BodyPace(timeout, rate))
    # What the worker made to start (modules, the application, its ring and
    # pools) lives as long as it does: the collector's full passes, a few
    # every thousand requests, need not go over it again (issue 24).
    gc.freeze()
    log.info('worker ready')
    return served


def exit_with_master():
    """(In a worker, first thing) a thread that ends this process once the
    master has exited: a SIGKILLed master otherwise left its workers behind,
    holding the port, partition connections and gossip, beside the master a
    supervisor started next."""
    try:
        handle = os.pidfd_open(MASTER)
    except ProcessLookupError:
        os._exit(1)   # the master died already
    if os.getppid() != MASTER:
        os._exit(1)   # (and its pid was taken again)

    def watch():
        select.select([handle], [], [])   # readable once the master has exited
        os._exit(1)
    threading.Thread(target=watch, name='master-watch', daemon=True).start()


def wsgi_application(target):
    """`module:name`, a WSGI application (bench/hello.py, tests), behind the gateway."""
    import importlib
    module, name = target.split(':')
    sys.path.insert(0, os.getcwd())
    return gateway(getattr(importlib.import_module(module), name))


def load(target):
    """(In each worker) the application Granian serves."""
    exit_with_master()
    return store_application() if target == STORE else wsgi_application(target)


def check_user(environ=os.environ):
    """Started as root, the server runs as RUN_AS; without it, it refuses."""
    user = environ.get('RUN_AS')
    if os.geteuid() != 0:
        return None
    if not user:
        print('serve.py was started as root: set RUN_AS to the user the server runs as '
              '(RUN_AS=kvstore; it needs to read this directory and its Python, and to write '
              'the SQLite partitions), or RUN_AS=root to keep root', file=sys.stderr)
        sys.exit(2)
    try:
        return pwd.getpwnam(user)
    except KeyError:
        print('RUN_AS=%s: no such user' % user, file=sys.stderr)
        sys.exit(2)


def configuration_problem():
    """Why the configuration cannot be served, or None when it can."""
    sys.path.insert(0, HERE)
    from kvstore import configuration
    try:
        configuration.load()
    except configuration.ConfigError as e:
        return str(e)
    return None


def check_configuration():
    """One clear line and exit status 2 for a bad configuration, before any worker starts."""
    problem = configuration_problem()
    if problem:
        print('configuration error: %s' % problem, file=sys.stderr)
        sys.exit(2)


def drop_privileges(entry, run):
    """(After the master has bound BIND) every process from here on runs as the user.

    What the workers import, the master imports first: this machine's Python
    may live where the user cannot read (a pyenv under /root)."""
    import asyncio, concurrent.futures.thread, multiprocessing.popen_fork  # noqa: E401,F401
    import granian._loops  # noqa: F401
    from kvstore.http import framing, gateway  # noqa: F401
    for path in (run, os.path.join(run, METRICS_DIRECTORY)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def server(app, run, user):
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    class Master(Server):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Granian stops the whole server when a worker it started less
            # than 5.5 s ago dies again (a "crash loop"): two workers killed
            # in a row (out of memory, kill -9) would close every client's
            # connection.  A worker that dies is started again, always.
            self.respawned_wrks = NoCrashLoops()

        def signal_handler_reload(self, *args, **kwargs):
            # nginx's and HAProxy's way: a configuration that cannot be
            # served is refused, and the workers serving the old one go on.
            problem = configuration_problem() if app == STORE else None
            if problem:
                log.error('SIGHUP: the configuration was not reloaded, the old one is still served: %s', problem)
                return
            log.info('SIGHUP: the configuration is good, new workers start')
            super().signal_handler_reload(*args, **kwargs)

    host, _, port = os.environ.get('BIND', '127.0.0.1:8080').rpartition(':')
    master = Master(
        app, address=host.strip('[]') or '0.0.0.0', port=int(port), interface=Interfaces.ASGINL,
        workers=int(os.environ.get('WORKERS', '4')),
        blocking_threads=1, websockets=False, respawn_failed_workers=True, respawn_interval=0.5,
        workers_kill_timeout=STOP_SECONDS,
        # A request head must arrive whole within 10 s (hyper's timer).
        http1_settings=HTTP1Settings(keep_alive=True, header_read_timeout=10000),
        log_dictconfig={
            'formatters': {'generic': {'()': 'logging.Formatter', 'fmt': LOG_FORMAT},
                           'access': {'()': 'logging.Formatter', 'fmt': LOG_FORMAT}},
            'root': {'handlers': ['console'], 'level': 'INFO'},
        },
        log_access=bool(os.environ.get('ACCESS_LOG')), log_access_format=ACCESS_FORMAT)
    if user and user.pw_uid != 0:
        master.on_startup(lambda: drop_privileges(user, run))
    return master


class NoCrashLoops(dict):
    """Granian's record of when it restarted each worker, kept empty."""

    def __setitem__(self, key, value):
        pass


def main(argv):
    if argv[1:] == ['--check']:   # before a start or a SIGHUP reload
        check_configuration()
        from kvstore import configuration
        print('configuration OK: %s' % configuration.config_path())
        return
    app = argv[1] if len(argv) > 1 else STORE
    if app == STORE:
        check_configuration()
    user = check_user()
    global MASTER
    MASTER = os.getpid()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    run = run_directory()
    count_in(os.path.join(run, METRICS_DIRECTORY))
    server(app, run, user).serve(target_loader=load)


def count_in(directory):
    """Where the workers count (kvstore/metrics.py): each its own files, read
    together by GET /metrics.  A fresh server starts from none; workers
    started by SIGHUP go on counting there."""
    shutil.rmtree(directory, ignore_errors=True)
    os.environ[METRICS_VARIABLE] = directory
    os.makedirs(directory, 0o700, exist_ok=True)


def run_directory():
    """A directory only this user can enter, for the workers' counts.  Those
    of masters no longer running are removed."""
    prefix, top = 'kvstore-run-', tempfile.gettempdir()
    for name in os.listdir(top):
        pid = name[len(prefix):].split('-')[0]
        if name.startswith(prefix) and pid.isdigit() and not os.path.exists('/proc/%s' % pid):
            shutil.rmtree(os.path.join(top, name), ignore_errors=True)
    path = os.path.join(top, '%s%d' % (prefix, os.getpid()))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return tempfile.mkdtemp(prefix='%s%d-' % (prefix, os.getpid()))   # not ours
    return path


if __name__ == '__main__':
    main(sys.argv)
