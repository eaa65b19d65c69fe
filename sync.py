#!/usr/bin/env python3
"""sync.py: the lazy reconciler.  Run it from cron (crontab.example).

    ./sync.py [hints|rebalance|repair|gc|all] [--dry-run] [--json] [--config PATH]
    ./sync.py new-incarnation PARTITION

It makes every replica of every key hold the same versions, and every key sit
on exactly the partitions the configured ring gives it.  `all` (the default)
runs the jobs in this order:

    hints      deliver hinted writes to their target once it is back (to the
               key's owners when the target no longer owns it); a hint is
               deleted only after they committed the version
    rebalance  record the configured ring as a new epoch when it changed, copy
               bucket records to their owners, move every key a partition holds
               but does not own (a partition added, removed with weight 0, or
               reweighted) to its owners and delete it there once every owner
               holds it, compare all arcs while the epoch's rebalance is under
               way, and mark the epoch complete when nothing is left
    repair     push lazy writes (pending markers left by writes with w < N) to
               the replicas that lack them; then anti-entropy (antientropy.py):
               compare the owners of each arc of the ring by digests, descend
               only where they differ, copy what each owner lacks, and remove
               from each owner the versions another it holds supersedes
    gc         remove chunks no version or hint points to (uploads cut off,
               versions superseded or moved away) once older than chunk_grace;
               reap a key's tombstones (one, or concurrent ones) held alike by
               every owner for longer than tombstone_grace, when no other
               partition holds a row or a hint of the key

`new-incarnation PARTITION` is a step of restoring a partition from a backup
(docs/sync.md): the partition mints a new incarnation, so the writes it
coordinates from then on cannot reuse a version counter it issued after the
backup was taken.

Every step copies before it deletes and can be repeated, so a run killed at any
moment loses nothing: the next one finishes the work.  A run holds an advisory
lock on a majority of the partitions; a second run finds it taken, says it is
skipping and exits 0.  [sync] batch_size and rate_limit throttle it.

Exit status: 0 converged (nothing was left undone), 1 work left (a partition
was down, hints wait for their owner, a rebalance is unfinished), 2 error
(among them a configuration none of whose partitions can be reached).  Every
line it prints starts with the time (ISO 8601, UTC), for its log; each job's
result is also recorded in the partitions (kvstore/coordinator/sync_runs.py).

This file is the command; the jobs are in kvstore/reconciler/.
"""
import argparse
import json
import logging
import sys
import time

try:
    from kvstore import configuration
    from datastore import Datastore
    from kvstore.engines import PartitionError
    from kvstore.reconciler.lock import ClusterLock
    from kvstore.reconciler.metering import Progress
    from kvstore.coordinator.versions import iso_time
    from kvstore.coordinator.sync_runs import JOBS
    from kvstore.reconciler.results import CONVERGED, ERROR, STATUS_WORDS, WORK_LEFT, exit_status, tell
    from kvstore.reconciler.runner import run, unreachable
except ImportError as e:   # exit 2, not Python's 1 (which means "work left" here)
    sys.stderr.write('sync: %s (run it with the project\'s virtualenv: .venv/bin/python sync.py)\n' % e)
    sys.exit(2)

NEW_INCARNATION = 'new-incarnation'

log = logging.getLogger('kvstore.sync')


def say(text, stream=None):
    """One line of output, after the time (the log of a cron run is this output)."""
    stream = stream or sys.stdout
    stream.write('%s %s\n' % (iso_time(), text))
    stream.flush()


def new_incarnation(store, partition):
    if partition not in store.engines:
        say('sync: no partition %r is configured' % partition, sys.stderr)
        return ERROR
    try:
        actor = store.engines[partition].new_incarnation()   # the next run compares every arc
    except PartitionError as e:
        say('sync: %s: %s' % (partition, e.reason), sys.stderr)
        return ERROR
    say('sync: %s now writes as %s; restart the front ends so that they use it, then run sync.py'
        % (partition, actor))
    return CONVERGED


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog='sync.py', description='The lazy reconciler: hand off hints, rebalance, repair '
        'replicas by anti-entropy, collect garbage.  Exit status: 0 converged, 1 work left, 2 error.')
    parser.add_argument('job', nargs='?', default='all', choices=JOBS + ('all', NEW_INCARNATION),
                        help='the job to run (default: all of them, in the order %s); %s PARTITION '
                        'after restoring that partition from a backup' % (', '.join(JOBS), NEW_INCARNATION))
    parser.add_argument('partition', nargs='?', help='the partition, for %s' % NEW_INCARNATION)
    parser.add_argument('--dry-run', action='store_true', help='report what would be done; change nothing')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of summary lines')
    parser.add_argument('--config', help='configuration file (default: $STORE_CONFIG or configuration.cfg)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar, even on a terminal')
    parser.add_argument('--force-view', action='store_true',
                        help='record the configured ring as a new epoch even when it looks stale')
    parser.add_argument('--full', action='store_true',
                        help='repair: compare every arc of the ring, not only the keys written since '
                        'the last runs (done anyway every [sync] full_pass_interval)')
    args = parser.parse_args(argv)
    if (args.job == NEW_INCARNATION) != (args.partition is not None):
        parser.error('a partition is named with %s, and only then' % NEW_INCARNATION)
    if args.job == NEW_INCARNATION and args.dry_run:
        parser.error('%s has no dry run: it only mints an incarnation' % NEW_INCARNATION)
    return args


class Output:
    """What a run prints: a line per job and a last line with the status, or
    (--json) one JSON object."""

    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()

    def job(self, result):
        say(result.summary)

    def finish(self, status, results=(), meter=None, message=None):
        seconds = round(time.monotonic() - self.started, 3)
        if message and status == ERROR:
            say('sync: ' + message, sys.stderr)
        if self.args.json:
            document = {'status': 'skipped' if message and status != ERROR else STATUS_WORDS[status], 'exit': status,
                        'dry_run': self.args.dry_run, 'seconds': seconds, 'time': iso_time(),
                        'jobs': {r.name: r.document() for r in results}}
            if meter is not None:
                document.update(rows_read=meter.rows_read, rows_written=meter.rows_written,
                                rows_digested=meter.rows_digested)
            if message:
                document['message'] = message
            print(json.dumps(document, sort_keys=True))
            sys.stdout.flush()
        elif message and status != ERROR:
            say('sync: ' + message)
        elif meter is not None:
            written = tell(self.args.dry_run, meter.rows_written, '%d written', 'would write %d')
            say('sync: %s%s in %.1fs (%d rows read, %s, %d digested by the partitions)'
                % (STATUS_WORDS[status], ' (dry run)' if self.args.dry_run else '', seconds,
                   meter.rows_read, written, meter.rows_digested))
        return status


def refusal(store, path):
    """Why no run may go ahead with this configuration, or None: when none of
    its partitions can be reached, it is not the front ends' configuration
    (or they are all down), and a run over it would report nothing to do."""
    why = unreachable(store)
    if len(why) < len(store.engines):
        return None
    return ('no partition of %s can be reached (%s): is it the configuration the front ends use?'
            % (path, '; '.join('%s: %s' % item for item in sorted(why.items()))))


def reconcile(store, args, output):
    """Take the cluster lock and run the jobs: the exit status."""
    lock = ClusterLock(store)
    taken = lock.acquire()
    if taken == 'busy':
        return output.finish(CONVERGED, message='another sync.py holds the lock (on %s); skipping'
                             % ', '.join(lock.busy))
    if taken == 'unreachable':
        return output.finish(WORK_LEFT, message='work left: fewer than a majority of the partitions '
                             'answered, so the lock cannot be taken')
    try:
        jobs = JOBS if args.job == 'all' else (args.job,)
        results, meter = run(store, jobs, dry_run=args.dry_run,
                             progress=Progress(not args.json and not args.no_progress),
                             force_view=args.force_view, report=None if args.json else output.job,
                             full=args.full)
    finally:
        lock.release()
    return output.finish(exit_status(results), results, meter)


def main(argv=None):
    args = parse_arguments(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s sync: %(message)s'))
    handler.formatter.formatTime = lambda record, datefmt=None: iso_time(record.created)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    output = Output(args)
    path = args.config or configuration.config_path()
    try:
        config = configuration.load(path)
    except configuration.ConfigError as e:
        return output.finish(ERROR, message=str(e))
    store = Datastore(config)
    try:
        if args.job == NEW_INCARNATION:
            return new_incarnation(store, args.partition)
        refused = refusal(store, path)
        if refused:
            return output.finish(ERROR, message=refused)
        return reconcile(store, args, output)
    finally:
        store.close()


if __name__ == '__main__':
    try:
        sys.exit(main())
    except Exception:   # exit 2, not Python's 1 (which means "work left" here)
        log.exception('failed')
        sys.exit(ERROR)
