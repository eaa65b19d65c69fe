#!/usr/bin/env python3
"""The production server (`make run`): the store under uWSGI.

Checks configuration.cfg once, then runs uWSGI in this process as its
master.  uWSGI's HTTP router (a C event loop) holds the client connections,
kept alive, on BIND and passes each request to whichever of WORKERS worker
processes, THREADS threads each, is free.  Each worker loads the application
itself (lazy-apps), so that its connection pools and gossip thread are its
own.  Each counts for GET /metrics in files of its own under the run
directory, which a scrape adds up (kvstore/metrics.py).  bench/results/stack.md
has the numbers behind the choice of uWSGI.

`python serve.py --check` checks the configuration and exits (0: good, 2: bad).

Environment: BIND (127.0.0.1:8080), WORKERS (4), THREADS (4), STORE_CONFIG,
RUN_AS (started as root: the user to run as, or root to stay root; required),
ACCESS_LOG (any value: log each request), STATS (an address or a socket
path: serve uWSGI's stats, a JSON document of the workers, there).
"""
import ctypes
import logging
import os
import pwd
import shutil
import signal
import stat
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
STORE_APPLICATION = 'serve:store_application()'
PR_SET_PDEATHSIG = 1
METRICS_DIRECTORY = 'metrics'                    # in the run directory
METRICS_VARIABLE = 'PROMETHEUS_MULTIPROC_DIR'    # prometheus_client's


def store_application():
    """What each worker serves (it imports this module): the store, in a
    worker the kernel kills when its master dies.  Without that, a SIGKILLed
    master left workers behind, holding the workers' socket, partition
    connections and gossip, beside the master a supervisor started next."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:   # the master died before the line above
        os._exit(1)
    import controller
    return controller.create_application()


def uwsgi_options(run_directory, environ=os.environ, app=STORE_APPLICATION):
    options = [
        '--http', environ.get('BIND', '127.0.0.1:8080'),
        # The router reaches the workers over a unix socket that only this
        # user can open.  Without it uWSGI binds its own protocol, which can
        # load and run any file, on a TCP port of 127.0.0.1 that any local
        # process can reach.
        '--socket', os.path.join(run_directory, 'uwsgi.sock'), '--chmod-socket=600',
        # Connections are kept alive, and closed after 2 s idle.  The close
        # also frees a client whose worker was killed mid-request: over the
        # unix socket the router reads the worker's death as the end of a
        # response and waits for the client's next request.
        '--http-keepalive=2',
        # The router answers `Expect: 100-continue`; chunked bodies reach the
        # application raw, decoded by framing.ChunkedDecoder.
        '--http-manage-expect',
        '--http-chunked-input',
        '--master',
        '--processes', environ.get('WORKERS', '4'),
        '--threads', environ.get('THREADS', '4'),
        '--lazy-apps',
        '--need-app',
        # SIGTERM (to the master): stop taking requests, let those under way
        # finish (for up to 5 s), then exit.  SIGHUP: the same, then new workers that read
        # the configuration again (lazy-apps).
        '--hook-master-start', 'unix_signal:15 gracefully_kill_them_all',
        '--die-on-term',   # until that hook runs, SIGTERM still ends the server
        '--worker-reload-mercy', '5', '--reload-mercy', '5',
        '--chdir', HERE,
        # SIGHUP's reload runs this again with the virtualenv's Python.
        '--binary-path', sys.executable,
        '--module', app,
        '--buffer-size', '65535',
        # Room for every field a 64 KiB request head can carry (10 bytes the
        # least each), so that the application answers 431 rather than the
        # worker dropping the request (uWSGI's default: 64 vars).
        '--max-vars', '3400',
        # Router buffers of 64 KiB broke large and chunked uploads.  (Over TCP
        # to the workers, --tcp-nodelay was needed too: Nagle held responses
        # of a few KiB 40 ms for the client's delayed ACK.)
        '--http-buffer-size', '32768',
    ]
    if not environ.get('ACCESS_LOG'):
        options.append('--disable-logging')
    if environ.get('STATS'):
        # uWSGI's stats server: a JSON document of the workers (pids, requests).
        options += ['--stats', environ['STATS']]
    user = environ.get('RUN_AS')
    if os.geteuid() == 0 and user and user != 'root':
        # The master binds BIND as root, then every process drops to the user,
        # which the router connects to the workers' socket as.
        entry = pwd.getpwnam(user)
        for path in (run_directory, os.path.join(run_directory, METRICS_DIRECTORY)):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        options += ['--uid', str(entry.pw_uid), '--gid', str(entry.pw_gid), '--chown-socket', user]
    return options


def check_user(environ=os.environ):
    """Started as root, the server runs as RUN_AS; without it, it refuses."""
    user = environ.get('RUN_AS')
    if os.geteuid() != 0:
        return
    if not user:
        print('serve.py was started as root: set RUN_AS to the user the server runs as '
              '(RUN_AS=kvstore; it needs to read this directory and its Python, and to write '
              'the SQLite partitions), or RUN_AS=root to keep root', file=sys.stderr)
        sys.exit(2)
    try:
        pwd.getpwnam(user)
    except KeyError:
        print('RUN_AS=%s: no such user' % user, file=sys.stderr)
        sys.exit(2)


def check_configuration():
    """One clear line and exit status 2 for a bad configuration, before any worker starts."""
    sys.path.insert(0, HERE)
    from kvstore import configuration
    try:
        configuration.load()
    except configuration.ConfigError as e:
        print('configuration error: %s' % e, file=sys.stderr)
        sys.exit(2)


def main(argv):
    if argv[1:] == ['--check']:   # before a start or a SIGHUP reload
        check_configuration()
        from kvstore import configuration
        print('configuration OK: %s' % configuration.config_path())
        return
    app = argv[1] if len(argv) > 1 else STORE_APPLICATION
    if app == STORE_APPLICATION:
        check_configuration()
    check_user()
    # The workers, forked from this process, log through this configuration.
    logging.basicConfig(level=logging.INFO, format='%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s')
    import pyuwsgi
    run = run_directory()
    count_in(os.path.join(run, METRICS_DIRECTORY))
    pyuwsgi.run(uwsgi_options(run, app=app))


def count_in(directory):
    """Where the workers count (kvstore/metrics.py): each its own files, read
    together by GET /metrics.  A fresh server starts from none; SIGHUP's
    reload (this process again, its environment kept) keeps the counts."""
    if os.environ.get(METRICS_VARIABLE) != directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.environ[METRICS_VARIABLE] = directory
    os.makedirs(directory, 0o700, exist_ok=True)


def run_directory():
    """A directory only this user can enter, for the workers' socket: the same
    one across SIGHUP's reload (the same pid).  Those of masters no longer
    running are removed (uWSGI exits without returning here)."""
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
