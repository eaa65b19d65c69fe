#!/usr/bin/env python3
"""The production server (`make run`): the store under uWSGI.

Checks configuration.cfg once, then runs uWSGI in this process as its
master.  uWSGI's HTTP router (a C event loop) holds the client connections,
kept alive, on BIND and passes each request to whichever of WORKERS worker
processes, THREADS threads each, is free.  Each worker loads the application
itself (lazy-apps), so that its connection pools and gossip thread are its
own.  bench/results/stack.md has the numbers behind the choice of uWSGI.

Environment: BIND (127.0.0.1:8080), WORKERS (4), THREADS (4), STORE_CONFIG,
ACCESS_LOG (any value: log each request), STATS (an address or a socket
path: serve uWSGI's stats, a JSON document of the workers, there).
"""
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def uwsgi_options(environ=os.environ, app='controller:create_application()'):
    options = [
        '--http', environ.get('BIND', '127.0.0.1:8080'),
        '--http-keepalive',
        # The router answers `Expect: 100-continue`; chunked bodies reach the
        # application raw, decoded by framing.ChunkedDecoder.
        '--http-manage-expect',
        '--http-chunked-input',
        '--master',
        '--processes', environ.get('WORKERS', '4'),
        '--threads', environ.get('THREADS', '4'),
        '--lazy-apps',
        '--need-app',
        '--die-on-term',
        '--chdir', HERE,
        '--module', app,
        '--buffer-size', '65535',
        # Room for every field a 64 KiB request head can carry (10 bytes the
        # least each), so that the application answers 431 rather than the
        # worker dropping the request (uWSGI's default: 64 vars).
        '--max-vars', '3400',
        # Without these a response of more than a few KiB on a kept-alive
        # connection waited 40 ms for the client's delayed ACK (Nagle): the
        # router forwarded it in page-sized writes.  (Router buffers of 64 KiB
        # broke large and chunked uploads.)
        '--tcp-nodelay', '--http-buffer-size', '32768',
    ]
    if not environ.get('ACCESS_LOG'):
        options.append('--disable-logging')
    if environ.get('STATS'):
        # uWSGI's stats server: a JSON document of the workers (pids, requests).
        options += ['--stats', environ['STATS']]
    return options


def check_configuration():
    """One clear line and exit status 2 for a bad configuration, before any worker starts."""
    sys.path.insert(0, HERE)
    import configuration
    try:
        configuration.load()
    except configuration.ConfigError as e:
        print('configuration error: %s' % e, file=sys.stderr)
        sys.exit(2)


def main(argv):
    app = argv[1] if len(argv) > 1 else 'controller:create_application()'
    if app == 'controller:create_application()':
        check_configuration()
    # The workers, forked from this process, log through this configuration.
    logging.basicConfig(level=logging.INFO, format='%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s')
    import pyuwsgi
    pyuwsgi.run(uwsgi_options(app=app))


if __name__ == '__main__':
    main(sys.argv)
