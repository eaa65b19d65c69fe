"""What this front end counts, for Prometheus: GET /metrics (docs/API.md).

Counters and histograms are counted where things happen (the one-line hooks
in the controller and the datastore call the functions below).  Under Granian
every worker counts in files of its own under PROMETHEUS_MULTIPROC_DIR (a
directory serve.py makes), and a scrape, whichever worker answers it, adds up
the files of every worker, those of workers that died included: a worker's
counts outlive it, and its successor (a new pid) counts in new files.
Without that variable (tests, `python controller.py`) the process counts in
memory.

Gauges are read when scraped: partition health as the front end sees it (the
newest observation of any of its workers: kvstore/coordinator/workers.py),
the answering worker's connection pools, and, from the partitions (at most
SCRAPE_TIMEOUT seconds), the hints they hold and the reconciler's last runs.
No gauge is kept in the files, so a dead worker leaves no stale gauge behind.
"""
import concurrent.futures
import os
import re
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from kvstore.coordinator.health import UP
from kvstore.coordinator.workers import front_end_view
from kvstore.engines import PartitionError

CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'   # generate_latest's: every Prometheus reads it
SCRAPE_TIMEOUT = 1.0                 # seconds a scrape waits for the partitions' answers
# Methods counted by name; any other a client sends is counted as 'other'.
METHODS = ('GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'OPTIONS', 'PATCH')
UNMATCHED = 'none'                   # the route of a path no route matches (a 404)
# Most requests take a few milliseconds: finer buckets than the default's low end.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

disable_created_metrics()   # as in the files: counters and histograms alone


class ProcessId:
    """This process's id, read at import and again in a forked child.  Counting
    in files, prometheus_client checks on every increment whether the process
    forked, by default with os.getpid(): a system call each time (3.8 % of a
    GET's Python time)."""
    value = os.getpid()

    @classmethod
    def refresh(cls):
        cls.value = os.getpid()


os.register_at_fork(after_in_child=ProcessId.refresh)
if getattr(values.ValueClass, '_multiprocess', False):
    values.ValueClass = values.MultiProcessValue(lambda: ProcessId.value)
# In memory (no PROMETHEUS_MULTIPROC_DIR), the store's metrics and nothing else.
COUNTED = CollectorRegistry(auto_describe=True)

REQUESTS = Counter('kvstore_http_requests', 'HTTP requests answered, by route, method and status',
                   ('route', 'method', 'status'), registry=COUNTED)
LATENCY = Histogram('kvstore_http_request_duration_seconds',
                    'Seconds from a request\'s arrival to its response\'s status and headers',
                    ('route', 'method'), buckets=LATENCY_BUCKETS, registry=COUNTED)
REPLICA_CALLS = Counter('kvstore_replica_calls', 'Calls to partitions by how they ended: ok (answered), '
                        'error (failed), timeout (timed out, or not waited for longer), refused (not made: the '
                        'partition is down in this front end\'s view)', ('partition', 'outcome'), registry=COUNTED)
REPLICA_SERIES = {}   # (partition, outcome): REPLICA_CALLS' child
HINTS_STORED = Counter('kvstore_hints_stored', 'Hints written on a fallback for a partition that missed a write',
                       ('partition',), registry=COUNTED)
READ_REPAIRS = Counter('kvstore_read_repairs', 'Versions sent to an owner found stale by a read',
                       registry=COUNTED)
SIBLINGS_SERVED = Counter('kvstore_siblings_served', 'Responses of 300 Multiple Choices (siblings)',
                          registry=COUNTED)


# -- hooks: one line each where it happens ------------------------------------------

def replica_called(partition, method, error):
    """A call to a partition ended, with error (the exception, or None).  Only
    a PartitionError is the partition failing: a timeout when a socket's
    timeout caused it (connect_timeout, read_timeout).  Sending a query is
    half a call, counted when its answer is read (or not waited for:
    replica_timed_out)."""
    if error is None and method.startswith('send_'):
        return
    if not isinstance(error, PartitionError):
        replica_call(partition, 'ok')
        return
    while error is not None and not isinstance(error, TimeoutError):
        error = error.__context__   # what the engine's error was raised in
    replica_call(partition, 'error' if error is None else 'timeout')


def replica_refused(partition):
    replica_call(partition, 'refused')


def replica_timed_out(partition):
    replica_call(partition, 'timeout')


REPLICA_OUTCOMES = ('ok', 'error', 'timeout', 'refused')


def known_partitions(names):
    """Every labelled series of the partitions a front end knows of, at 0
    until it counts (Prometheus' guidelines): an alert on an error rate sees 0,
    not no series at all."""
    for name in names:
        for outcome in REPLICA_OUTCOMES:
            if (name, outcome) not in REPLICA_SERIES:
                REPLICA_SERIES[name, outcome] = REPLICA_CALLS.labels(name, outcome)
        HINTS_STORED.labels(name)


def replica_call(partition, outcome):
    # Each (partition, outcome) looked up once: labels() costs as much as inc().
    counter = REPLICA_SERIES.get((partition, outcome))
    if counter is None:
        counter = REPLICA_SERIES[partition, outcome] = REPLICA_CALLS.labels(partition, outcome)
    counter.inc()


def hint_stored(partition):
    HINTS_STORED.labels(partition).inc()


def read_repair_sent():
    READ_REPAIRS.inc()


def siblings_served():
    SIBLINGS_SERVED.inc()


# -- HTTP requests --------------------------------------------------------------------

def route_label(resource):
    """controller.urls' resource name as a label: ClusterGossip -> cluster_gossip."""
    return re.sub(r'(?<!^)(?=[A-Z])', '_', resource).lower() if resource else UNMATCHED


def instrumented(wsgi, route):
    """The WSGI application wsgi, counting each request when its status and
    headers are ready (before the client can see them); route(environ) ->
    (resource class or None, ...) names its route."""
    series = {}   # (route, method, status): (counter, histogram), looked up once

    def counted(environ, start_response):
        started = perf_counter()
        answered = []

        def start(status, headers, exc_info=None):
            answered[:] = [status[:3]]
            return start_response(status, headers, exc_info)
        try:
            return wsgi(environ, start)
        finally:
            method = environ.get('REQUEST_METHOD', '')
            resource = route(environ)[0]
            labels = (resource and resource.__name__, method if method in METHODS else 'other',
                      answered[0] if answered else '500')
            found = series.get(labels)
            if found is None:
                name = route_label(labels[0])
                found = series[labels] = (REQUESTS.labels(name, *labels[1:]), LATENCY.labels(name, labels[1]))
            found[0].inc()
            found[1].observe(perf_counter() - started)
    return counted


# -- a scrape ---------------------------------------------------------------------------

def exposition(datastore):
    """(body, content type) of GET /metrics."""
    known_partitions(datastore.engines)   # in this worker's files too, before they are read
    counted = MultiProcessCollector(None) if os.environ.get('PROMETHEUS_MULTIPROC_DIR') else COUNTED
    return generate_latest(Scrape(counted, FrontEndView(datastore))), CONTENT_TYPE


class Scrape:
    """What generate_latest reads: the collectors' metrics, in turn."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


class FrontEndView:
    """The gauges, read as the scrape is answered."""

    def __init__(self, datastore):
        self.datastore = datastore

    def collect(self):
        datastore = self.datastore
        up = GaugeMetricFamily('kvstore_partition_up', 'The partition is up (1) or down or suspect (0), as '
                               'this front end sees it (the newest observation of its workers)',
                               labels=('partition',))
        view = front_end_view(datastore.health.view())
        for name in datastore.engines:
            up.add_metric((name,), int(view[name]['state'] == UP))
        yield up
        pools = GaugeMetricFamily('kvstore_pool_connections', 'Connections to the partition the answering '
                                  'worker holds, by state', labels=('partition', 'state'))
        for name, engine in datastore.engines.items():
            for state, count in sorted(engine.pool.counts().items()):
                pools.add_metric((name, state), count)
        yield pools
        held, runs = partition_reads(datastore)
        waiting = GaugeMetricFamily('kvstore_hints_waiting', 'Hints held for the partition, on the partitions '
                                    'that answered the scrape', labels=('partition',))
        for name in datastore.engines:
            waiting.add_metric((name,), sum(counts[name][0] for counts in held if name in counts))
        yield waiting
        last = GaugeMetricFamily('kvstore_sync_last_run_timestamp_seconds',
                                 'When sync.py\'s last run of the job ended', labels=('job',))
        success = GaugeMetricFamily('kvstore_sync_last_run_success',
                                    'sync.py\'s last run of the job succeeded (1) or not (0)', labels=('job',))
        for job, (finished, ok) in sorted(runs.items()):
            last.add_metric((job,), finished)
            success.add_metric((job,), int(ok))
        yield last
        yield success




def partition_reads(datastore):
    """([{target: (hints, oldest)} of each partition that answered], {job:
    (finished, ok)}), asked of every partition at once through
    Datastore.call (counted as replica calls; one down is not asked), waiting
    at most SCRAPE_TIMEOUT: whatever comes later is left out."""
    executor = datastore.executor
    hints = [executor.submit(datastore.call, name, 'hint_counts') for name in datastore.engines]
    runs = executor.submit(sync_last_runs, datastore)
    done, _ = concurrent.futures.wait(hints + [runs], timeout=SCRAPE_TIMEOUT)
    held = [f.result() for f in hints if f in done and not f.exception()]
    return held, (runs.result() if runs in done and not runs.exception() else {})


def sync_last_runs(datastore):
    """{job: (when it ended, in Unix seconds, succeeded)} of sync.py's last
    runs, as kvstore.coordinator.sync_runs records them."""
    try:
        from kvstore.coordinator.sync_runs import last_runs
    except ImportError:
        return {}
    return {job: (run['timestamp'], run['ok']) for job, run in last_runs(datastore).items()}

