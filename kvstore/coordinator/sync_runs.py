"""The last run's result of each job, kept in every partition's metadata table
('sync.last.<job>', beside the view records) so that any front end can show
it (GET /cluster, /metrics) without reaching the host that ran sync.py."""
import json
import time

from kvstore.engines import PartitionError
from kvstore.coordinator.versions import iso_time

JOBS = ('hints', 'rebalance', 'repair', 'gc')   # sync.py's jobs, in the order `all` runs them
RECORD_PREFIX = 'sync.last.'
RECORD_LIMIT = 4096     # bytes a metadata value may hold
TEXT_LIMIT = 500        # characters kept of a summary or an error


def run_record(result, finished):
    """The record of one job's run: {job, finished (ISO 8601 UTC), timestamp
    (seconds since the epoch), ok (no error), work_left, counts, waiting,
    summary, error}."""
    record = {'job': result.name, 'finished': iso_time(finished),
              'timestamp': round(finished, 3), 'ok': not result.error, 'work_left': result.work_left,
              'counts': result.counts, 'waiting': result.waiting, 'summary': result.summary[:TEXT_LIMIT],
              'error': result.error and result.error[:TEXT_LIMIT]}
    for bulky in ('summary', 'waiting', 'counts'):   # fit a metadata value, dropping detail first
        if len(json.dumps(record, sort_keys=True).encode()) <= RECORD_LIMIT:
            break
        record[bulky] = None
    return record


def record_runs(store, results, finished=None):
    """Record each result on every partition that answers: the partitions
    that did not."""
    finished = time.time() if finished is None else finished
    values = {RECORD_PREFIX + r.name: json.dumps(run_record(r, finished), sort_keys=True) for r in results}
    missed = []
    for name in sorted(store.engines):
        try:
            store.call(name, 'set_metadata', values)
        except PartitionError:
            missed.append(name)
    return missed


def last_runs(store, jobs=JOBS):
    """{job: record} of each job's newest recorded run across the partitions
    that answer (jobs never recorded are left out)."""
    newest = {}
    for name in sorted(store.engines):
        try:
            found = store.call(name, 'get_metadata', [RECORD_PREFIX + job for job in jobs])
        except PartitionError:
            continue
        for value in found.values():
            record = json.loads(value)
            job = record['job']
            if job not in newest or record['timestamp'] > newest[job]['timestamp']:
                newest[job] = record
    return newest
