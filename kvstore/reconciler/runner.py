"""One reconciler run: record the configured view, then run the jobs in JOBS
order over one Datastore, and record how each ended (kvstore/coordinator/sync_runs.py)."""
import logging
import os

from datastore import ViewConflict
from kvstore.engines import PartitionError
from kvstore.reconciler.changes import full_pass_due, read_checkpoints
from kvstore.reconciler.fences import spread_fences
from kvstore.reconciler.gc import collect_garbage
from kvstore.reconciler.hints import deliver_hints
from kvstore.reconciler.incarnations import renew_restored
from kvstore.coordinator.sync_runs import JOBS, record_runs
from kvstore.reconciler.metering import Meter, Progress
from kvstore.reconciler.partitions import Partitions
from kvstore.reconciler.rebalance import rebalance
from kvstore.reconciler.repair import repair
from kvstore.reconciler.results import JobResult

log = logging.getLogger('kvstore.sync')


def unreachable(store):
    """{partition: why it cannot be reached}: a SQLite file that does not exist
    (a run never creates a partition: the front ends do), or a partition that
    does not answer."""
    why = {p.name: 'no database file %s' % p.path for p in store.config.partitions
           if p.engine == 'sqlite' and not os.path.exists(p.path)}
    for name in sorted(set(store.engines) - set(why)):
        try:
            store.call(name, 'get_metadata', ['view'])
        except PartitionError as e:
            why[name] = e.reason
    return why


def run(store, jobs, dry_run=False, progress=None, force_view=False, report=None, full=False):
    """Run the jobs (names, in JOBS order) over store: ([JobResult], the Meter).
    report(JobResult) is called as each job ends.  A real run records each
    job's result in the partitions; a dry run changes nothing.  full: a full
    pass of anti-entropy over every arc, due or not (changes.py)."""
    parts = Partitions(store, Meter(store.config.sync_rate_limit), progress or Progress(False), dry_run)
    if dry_run:               # a partition coming back must not trigger a hand-off
        store.hand_off = lambda *args, **kwargs: (0, 0)
    try:
        # A new epoch when the configured ring changed, before any job runs;
        # ViewConflict: a configuration that looks out of date, which no job may act on.
        view, changed, _ = store.record_view(force=force_view, dry_run=dry_run)
    except ViewConflict as e:
        results = [JobResult(job, {}, {}, True, '%s: not run: %s' % (job, e), error=str(e))
                   for job in JOBS if job in jobs]
        if not dry_run:
            record_runs(store, results)
        return [JobResult('view', {}, {}, True, 'view: no job run: %s' % e, error=str(e))], parts.meter
    if dry_run and changed:
        parts.meter.wrote(len(store.engines))
    # Where each partition's changes stand, before any job writes (changes.py).
    parts.tops = parts.each(parts.names, 'last_change')[0]
    parts.checkpoints = read_checkpoints(parts)
    parts.full_pass = full or full_pass_due(parts, parts.checkpoints)
    # A partition restored without new-incarnation gets one before any job
    # sends it a version (incarnations.py); the run then compares every arc.
    # Every partition takes every bucket fence before any job copies a version (fences.py).
    results = [result for result in (renew_restored(parts), spread_fences(parts)) if result]
    for result in results if report else ():
        report(result)
    compared = False     # rebalance already went over every arc in this run
    rebalancing = view['state'] != 'complete'
    steps = {'hints': lambda: deliver_hints(parts), 'rebalance': lambda: rebalance(parts, view, changed),
             'repair': lambda: repair(parts, view, compared), 'gc': lambda: collect_garbage(parts, view)}
    for job in (job for job in JOBS if job in jobs):
        result = _run_job(parts, job, steps[job])
        compared = compared or (job == 'rebalance' and rebalancing and not result.error)
        results.append(result)
        if report:
            report(result)
    if not dry_run:
        record_runs(store, results)
    return results, parts.meter


def _run_job(parts, job, step):
    written = parts.meter.rows_written
    try:
        result = step()
        if parts.dry_run and parts.meter.rows_written > written:
            result.work_left = True   # a real run would change something
    except Exception as e:   # reported; the other jobs still run
        log.exception('%s failed', job)
        result = JobResult(job, {}, {}, True, '%s: failed: %s' % (job, e), error=str(e) or type(e).__name__)
    finally:
        parts.progress.clear()
    return result
