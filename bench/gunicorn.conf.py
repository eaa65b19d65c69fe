"""gunicorn gthread settings: the serving stack `make run` used before uWSGI,
kept so that `bench/run.py --server gunicorn` can compare the two.

Threads keep client connections alive and share one datastore (its
connection pools and replica fan-out threads) per worker process.
"""
import os
import sys

bind = os.environ.get('BIND', '127.0.0.1:8080')
workers = int(os.environ.get('WORKERS', '2'))
worker_class = 'gthread'
threads = int(os.environ.get('THREADS', '8'))
keepalive = 5
# No shared control socket under $HOME: several stores may run on one host.
control_socket_disable = True
accesslog = '-' if os.environ.get('ACCESS_LOG') else None
wsgi_app = 'controller:create_application()'


def on_starting(server):
    """Check configuration.cfg once, before any worker starts: one clear line."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kvstore import configuration
    try:
        configuration.load()
    except configuration.ConfigError as e:
        print('configuration error: %s' % e, file=sys.stderr)
        sys.exit(2)
