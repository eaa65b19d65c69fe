"""What a sync.py run costs as the store grows (issue #27): the embedded
default (four SQLite partitions, N=3), at each size a full pass (what every
run cost before the reconciler followed the changes), a run with nothing to
do, and a run after 1 % of the keys were written.  It only reports.

    .venv/bin/python bench/reconciler.py [--sizes 10000,100000,1000000] [--directory DIR]

Writes bench/results/reconciler.json and reconciler.md.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import sync  # noqa: E402
from datastore import Datastore  # noqa: E402
from test import support  # noqa: E402
from test.sync_support import bulk_load, config_of  # noqa: E402

RESULTS = os.path.join(HERE, 'bench', 'results')
NOTE = ('The full pass is what every run did before the reconciler followed the changes.  "The run after" '
        'reads the same changes again on MariaDB (a transaction numbers its row before it commits: docs/sync.md); '
        'SQLite\'s numbers follow its commits.')


def one_run(config, **options):
    """A sync.py all run in process, its own Datastore as cron's has: the
    seconds, without the Datastore's start, and what the Meter counted."""
    store = Datastore(config)
    try:
        store.ring.walk('b', 'warm')   # the ring is dealt when a front end starts, not per run
        started = time.monotonic()
        results, meter = sync.run(store, sync.JOBS, **options)
        seconds = time.monotonic() - started
    finally:
        store.close()
    return {'seconds': round(seconds, 3), 'status': sync.STATUS_WORDS[sync.exit_status(results)],
            'rows_read': meter.rows_read, 'rows_written': meter.rows_written,
            'rows_digested': meter.rows_digested}


def measure(size, directory):
    partitions = support.sqlite_partitions(directory)
    config = config_of(partitions)
    store = Datastore(config)
    keys = ['k%08d' % i for i in range(size)]
    started = time.monotonic()
    for start in range(0, size, 100000):
        bulk_load(store, 'b', keys[start:start + 100000])
    loaded = time.monotonic() - started
    row = {'keys': size, 'load_seconds': round(loaded, 1)}
    row['first_run'] = one_run(config)                # no checkpoint yet: a full pass
    row['nothing_to_do'] = min((one_run(config) for _ in range(3)), key=lambda r: r['seconds'])
    row['full_pass'] = one_run(config, full=True)     # what every run cost before
    written = keys[::100]
    started = time.monotonic()
    for key in written:
        store.put('b', key, b'new', 'text/plain', w=1)
    row['one_percent_written'] = {'keys': len(written), 'seconds': round(time.monotonic() - started, 1)}
    row['after_one_percent'] = one_run(config)
    row['after_that'] = one_run(config)   # reads the same changes again (docs/sync.md)
    row['then_nothing'] = one_run(config)
    store.close()
    return row


def table(rows):
    lines = ['| keys | full pass (every run before) | nothing to do | after 1 % written | the run after | rows read / digested after 1 % |',
             '|---|---|---|---|---|---|']
    for r in rows:
        lines.append('| {:,} | {:.2f} s ({:,} digested) | {:.3f} s ({} read, {} digested) | {:.2f} s | {:.2f} s | {:,} / {:,} |'.format(
            r['keys'], r['full_pass']['seconds'], r['full_pass']['rows_digested'],
            r['nothing_to_do']['seconds'], r['nothing_to_do']['rows_read'], r['nothing_to_do']['rows_digested'],
            r['after_one_percent']['seconds'], r['after_that']['seconds'],
            r['after_one_percent']['rows_read'], r['after_one_percent']['rows_digested']))
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10000,100000,1000000')
    parser.add_argument('--directory', help='where the SQLite files go (default: a temporary directory)')
    args = parser.parse_args()
    os.environ.setdefault('WEBPY_ENV', 'test')
    rows = []
    for size in [int(s) for s in args.sizes.split(',')]:
        directory = tempfile.mkdtemp(prefix='kvstore-reconciler-', dir=args.directory)
        try:
            rows.append(measure(size, directory))
            print(json.dumps(rows[-1]), flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(RESULTS, exist_ok=True)
    document = {'what': 'sync.py all on the embedded default: 4 SQLite partitions, N=3; seconds of the run, '
                        'the front end\'s start left out; best of 3 for nothing to do',
                'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'load': os.getloadavg(), 'rows': rows}
    with open(os.path.join(RESULTS, 'reconciler.json'), 'w') as f:
        json.dump(document, f, indent=2)
    with open(os.path.join(RESULTS, 'reconciler.md'), 'w') as f:
        f.write('# sync.py as the store grows\n\n%s (%s; load average %.1f while measured).\n\n%s\n\n%s\n'
                % (document['what'], document['when'], document['load'][0], table(rows), NOTE))
    print(table(rows))


if __name__ == '__main__':
    main()
