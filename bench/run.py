#!/usr/bin/env python3
"""The store's benchmark (issue 6, "Build the measurement first").

One run starts everything it measures, on this machine only (loopback):

  * four private mariadbd servers (test/mariadb.py), a temporary
    configuration with them as partitions (N=3, R=2, W=2), and the store
    under Granian exactly as `make run` serves it (python serve.py, with BIND,
    WORKERS, THREADS and STORE_CONFIG), or under gunicorn gthread
    (--server gunicorn, bench/gunicorn.conf.py) for comparison;
  * a data set written straight through the engine layer, the very rows
    the store writes (see workloads.bulk_load);
  * wrk (one thread, pinned to one CPU, its own CPU time measured) with the
    Lua scripts of bench/lua: YCSB workloads C, B, A and write-only with
    zipfian keys (theta 0.99) over 1 KiB values, at r/w = one and quorum;
    1 MiB values; listing pages;
  * the references: a web.py hello world under the same server settings
    (the ceiling), a PyMySQL primary-key SELECT loop against one server (the
    database's own cost) and etcd (one node, its HTTP/JSON gateway; what a
    user would otherwise pick), with the same keys, values and key law.

For each row it reports throughput, latency percentiles, errors (non-2xx),
and the CPU milliseconds per request spent by the server and the databases,
read from /proc/<pid>/stat before and after the row: on a two-core machine
that is steadier than requests per second.  Results go to
bench/results/results.md and throughput.png (--scaling: scaling.md and
scaling.png).

Everything started is stopped and every temporary file removed at the end,
on errors and on Ctrl-C or SIGTERM too; a run that was SIGKILLed is cleaned
up by the next one.

    make bench                                 # installs what it needs, then runs
    .venv/bin/python bench/run.py --quick      # 2 s rows: a smoke run
    .venv/bin/python bench/run.py --only 'C-*,etcd-C'
    .venv/bin/python bench/run.py --scaling    # GET r=1: 10k/1M keys, 2/4/8 partitions

The parts: bench/servers.py (what is started), bench/workloads.py (rows, key
law, data sets), bench/measurement.py (wrk, CPU, percentiles, profiles),
bench/report.py (results files), bench/plans.py (the order of a run).
"""
import argparse
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Production database names: no test_ prefix (configuration.py), in the
# store's server and in this process's loader alike.
os.environ.pop('WEBPY_ENV', None)

from bench.common import RESULTS_DIR, BenchError, log  # noqa: E402
from bench.plans import main_run, scaling_run  # noqa: E402
from bench.servers import Run  # noqa: E402
from bench.workloads import main_rows, select_rows  # noqa: E402


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--duration', type=int, default=10, help='seconds per row (default 10)')
    parser.add_argument('--connections', type=int, default=32, help='wrk connections (default 32)')
    parser.add_argument('--keys', type=int, default=10000, help='keys of 1 KiB (default 10000)')
    parser.add_argument('--big-keys', type=int, default=64, help='keys of 1 MiB (default 64)')
    parser.add_argument('--quick', action='store_true', help='2 s rows and 1 s warm-ups: a smoke run')
    parser.add_argument('--only', action='append', metavar='ROWNAME',
                        help='only these rows (comma-separated, shell patterns: --only "C-*,etcd-C")')
    parser.add_argument('--scaling', action='store_true',
                        help='GET r=1 with 10k and 1M keys (4 partitions) and with 2, 4, 8 partitions')
    parser.add_argument('--scaling-keys', default='10000,1000000')
    parser.add_argument('--scaling-partitions', default='2,4,8')
    parser.add_argument('--server', choices=('serve', 'gunicorn'), default='serve',
                        help='serve: serve.py (Granian), as make run does (default); gunicorn: gthread, for comparison')
    parser.add_argument('--workers', type=int, default=4, help='WORKERS: worker processes (default 4)')
    parser.add_argument('--threads', type=int, default=4, help='THREADS: threads per worker (default 4)')
    parser.add_argument('--warmup', type=int, default=2, help='seconds of unmeasured load before a row')
    parser.add_argument('--buffer-pool', default='1G', help='innodb_buffer_pool_size of each server')
    parser.add_argument('--retries', type=int, default=2,
                        help='runs again a row that other processes disturbed or that one '
                             'worker served alone (default: up to twice)')
    parser.add_argument('--quiet-wait', type=int, default=20,
                        help='seconds to wait for other processes to calm down before a row')
    parser.add_argument('--wrk-cpu', default=str((os.cpu_count() or 1) - 1),
                        help='the CPU wrk is pinned to (default the last; "none" to not pin)')
    parser.add_argument('--merge', action='store_true',
                        help='keep the rows of the last results.json that this run does not measure '
                             '(to measure disturbed rows again: --only ROWS --merge)')
    parser.add_argument('--results-dir', default=RESULTS_DIR, metavar='DIRECTORY',
                        help='where results go (default bench/results; bench/results/tmp is gitignored)')
    parser.add_argument('--profile', nargs='?', const='C-one', metavar='ROWNAME',
                        help='after the rows, py-spy the store\'s workers under a row\'s load '
                             '(default C-one, the GET path): bench/results/profile.svg')
    return parser


def parse_args(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.quiet_wait = 2, 1, 5
    if args.wrk_cpu == 'none' or not shutil.which('taskset'):
        args.wrk_cpu = None
    if args.keys < 2 or args.big_keys < 2:
        parser.error('--keys and --big-keys must be at least 2')
    args.results_dir = os.path.abspath(args.results_dir)
    return args


def check_tools(args):
    """wrk for every run; etcd only when an etcd row runs."""
    needed = ['wrk']
    if not args.scaling and any(r.system == 'etcd' for r in select_rows(main_rows(), args.only)):
        needed.append('etcd')
    missing = [tool for tool in needed if not shutil.which(tool)]
    if missing:
        raise BenchError('%s not found: `make bench` installs them (apt-get install wrk etcd-server)'
                         % ' and '.join(missing))


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Before the harness looks: it leaves a handler already set in place.
    # Ctrl-C is KeyboardInterrupt even when started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    run = None
    status = 0
    try:
        check_tools(args)
        run = Run()
        (scaling_run if args.scaling else main_run)(run, args)
    except KeyboardInterrupt:
        log('interrupted: cleaning up')
        status = 130
    except BenchError as e:
        log('failed: %s', e)
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if run is not None:
            run.close()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
    return status


if __name__ == '__main__':
    sys.exit(main())
