"""What a run does, in order: the main run (every row, the references and
etcd) and the scaling run (GET r=1 with more keys and more partitions)."""
import datetime

from bench.feed import FeedReader
from bench.common import BIG_BUCKET, BUCKET, KEY_FORMAT, KIB, MIB, THETA, BenchError, log
from bench.measurement import Target, measure_pymysql, measure_wrk, profile_store, wait_idle
from bench.report import machine_facts, merge_previous, write_results, write_scaling
from bench.servers import (drop_database, http_request, mariadb_facts, mariadb_status, process_tree,
                           server_setting, start_cluster, start_etcd, start_server, write_sqlite_config,
                           write_store_config)
from bench.workloads import (bulk_load, etcd_load, key_law_env, main_rows, put_load, queries_per_request,
                             row_named, select_rows)

# The store connects as the harness's store user, whose grants (the documented
# ones, test/mariadb_grants.py) cover the test_ databases alone.
DATABASE = 'test_kvbench'
QUERIES_BUCKET = 'bench-queries'   # the keys queries_per_request writes


class MainRun:
    """The rows a main run measures, and what it has measured so far."""

    def __init__(self, run, args):
        self.run, self.args = run, args
        self.rows = select_rows(main_rows(), args.only)
        self.systems = {r.system for r in self.rows}
        self.facts = machine_facts()
        self.results = {}
        self.cluster = self.config_path = None
        self.store_info = {}
        self.profile = None

    def db_pids(self):
        return [s.pid for s in self.cluster if s.pid] if self.cluster else []

    def env_for(self, row):
        return key_law_env(self.args.big_keys if row.big else self.args.keys)

    def measure_rows(self, system, target):
        for row in self.rows:
            if row.system == system and row.feed:
                with FeedReader(target.url, BUCKET) as reader:
                    self.results[row.name] = measure_wrk(self.run, self.args, row, target, self.env_for(row))
                    self.results[row.name].update(reader.lag())
                log('%s: feed lag p50 %.1f ms, p99 %.1f ms over %d probes (%d not delivered)', row.name,
                    *(self.results[row.name][k] for k in ('lag_p50_ms', 'lag_p99_ms', 'lag_samples', 'lag_missing')))
            elif row.system == system:
                self.results[row.name] = measure_wrk(self.run, self.args, row, target, self.env_for(row))

    def load_mariadb(self):
        """Four partitions on private servers, loaded with the data set."""
        args = self.args
        self.cluster = start_cluster(self.run, 4, args)
        self.facts['mariadb'] = mariadb_facts(self.cluster)
        self.config_path, self.store_info = write_store_config(self.run, self.cluster, DATABASE, 4)
        log('loading %d keys of 1 KiB into %s', args.keys, BUCKET)
        seconds = bulk_load(self.config_path, BUCKET, args.keys, KIB)
        log('loaded in %.1f s (%.0f keys/s)', seconds, args.keys / seconds)
        if any(r.big for r in self.rows) and 'store' in self.systems:
            seconds = put_load(self.config_path, BIG_BUCKET, args.big_keys, MIB)
            log('loaded %d keys of 1 MiB into %s in %.1f s', args.big_keys, BIG_BUCKET, seconds)

    def measure_app(self, system, config_path, app, probe='/'):
        """The hello world's or the floor's rows, under the store's server settings."""
        server = start_server(self.run, system, config_path, self.args, app=app, probe=probe)
        self.measure_rows(system, Target(server.url + '/', lambda: process_tree(server.pid), self.db_pids))
        server.stop()

    def measure_store(self):
        self.facts['queries'] = queries_per_request(self.config_path, self.cluster, QUERIES_BUCKET)
        log('one request at a time: round trips, statements, commits, fsyncs, db CPU ms, front end CPU ms: %s',
            ';  '.join('%s %.2f, %.2f, %.2f, %.2f, %.3f, %.3f' % ((name,) + counts)
                       for name, counts in self.facts['queries'].items()))
        store = start_server(self.run, 'store', self.config_path, self.args)
        target = Target(store.url + '/', lambda: process_tree(store.pid), self.db_pids,
                        lambda: mariadb_status(self.cluster, 4))
        self.measure_rows('store', target)
        if self.args.profile:
            self.profile_store(target, store.pid)
        store.stop()

    def profile_store(self, target, master):
        row = next((r for r in main_rows() if r.name == self.args.profile and r.system == 'store'), None)
        if row is None:
            raise BenchError('--profile %s: not a store row' % self.args.profile)
        row.env = dict(row.env, **self.env_for(row))
        wait_idle(lambda: target.server() + target.db())
        log('profiling the store (%s) with py-spy', row.name)
        self.profile = profile_store(self.run, self.args, row, target, master)

    def measure_etcd(self):
        if self.cluster is not None:
            # InnoDB's background work (purge, flushing) after the write rows
            # would take CPU from etcd's rows: the databases are done by now.
            self.cluster.stop(False)
        etcd = start_etcd(self.run)
        self.facts['etcd_server'] = http_request(etcd.port, 'GET', '/version')[1].decode('utf-8', 'replace')
        log('loading %d keys of 1 KiB into etcd', self.args.keys)
        seconds = etcd_load(etcd.port, BUCKET, self.args.keys, KIB)
        log('loaded in %.1f s', seconds)
        if any(r.big and r.system == 'etcd' for r in self.rows):
            etcd_load(etcd.port, BIG_BUCKET, self.args.big_keys, MIB)
        self.measure_rows('etcd', Target(etcd.url, lambda: [etcd.pid]))
        etcd.stop()

    def measure(self):
        """Every system the rows need, one after the other."""
        if self.systems & {'store', 'floor', 'pymysql'}:
            self.load_mariadb()
        if 'hello' in self.systems:
            self.measure_app('hello', self.config_path or write_sqlite_config(self.run), 'hello:application')
        if 'floor' in self.systems:
            self.measure_app('floor', self.config_path, 'floor:application',
                             probe='/buckets/%s/keys/%s' % (BUCKET, KEY_FORMAT % 0))
        for row in self.rows:
            if row.system == 'pymysql':
                self.results[row.name] = measure_pymysql(self.args, row, self.cluster, self.config_path,
                                                         DATABASE, self.db_pids)
        if 'store' in self.systems:
            self.measure_store()
        if 'etcd' in self.systems:
            self.measure_etcd()

    def settings(self):
        args, info = self.args, self.store_info
        return {
            'rows': '%d s each after a %d s warm-up; wrk -t1 -c%d (1 MiB rows: -c%d, batches: -c%d), pinned to CPU %s'
                    % (args.duration, args.warmup, args.connections, max(1, args.connections // 4),
                       max(1, args.connections // 8), args.wrk_cpu),
            'store': '4 MariaDB partitions, N=%s, R=%s, W=%s, 64 vnodes; %s' % (
                info.get('replicas', 3), info.get('r', 2), info.get('w', 2), server_setting(args)),
            'data': '%d keys of 1 KiB in bucket `%s`, %d keys of 1 MiB in bucket `%s`; keys zipfian '
                    '(YCSB, theta %.2f, scrambled)' % (args.keys, BUCKET, args.big_keys, BIG_BUCKET, THETA),
            'etcd': 'one node on loopback, temporary data dir, --quota-backend-bytes 8 GiB, HTTP/JSON gateway',
        }

    def write(self):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        for row in self.rows:
            if row.name in self.results:
                self.results[row.name].update(etcd=row.etcd, measured=stamp, commit=self.facts.get('commit'))
        if self.args.merge:
            self.profile = merge_previous(self.args.results_dir, self.results, self.profile)
        ordered = [self.results[r.name] for r in main_rows() if r.name in self.results]
        write_results(self.args.results_dir, ordered, self.facts, self.settings(), self.profile)


def main_run(run, args):
    plan = MainRun(run, args)
    plan.measure()
    plan.write()


# -- scaling ---------------------------------------------------------------------------------------

def _scaling_hello(run, args, db_pids):
    hello = start_server(run, 'hello', write_sqlite_config(run), args, app='hello:application')
    measured = measure_wrk(run, args, row_named('hello'), Target(hello.url + '/', lambda: process_tree(hello.pid),
                                                                 db_pids))
    measured.update(label='hello world', partitions=None, keys=None, load_s=None, nrw='')
    hello.stop()
    return measured


def _scaling_configuration(run, args, cluster, count, nkeys, listing):
    """GET r=1 on `count` partitions holding `nkeys` keys (and, if `listing`, a
    page of keys for one client): the rows measured."""
    db_pids = lambda: [s.pid for s in cluster if s.pid]
    database = 'test_kvbench_%dp_%dk' % (count, nkeys // 1000)
    config_path, info = write_store_config(run, cluster, database, count, name='%s.cfg' % database)
    log('%d partitions: loading %d keys of 1 KiB', count, nkeys)
    seconds = bulk_load(config_path, BUCKET, nkeys, KIB)
    log('loaded in %.1f s (%.0f keys/s, %.0f rows/s)', seconds, nkeys / seconds,
        nkeys * info['replicas'] / seconds)
    store = start_server(run, 'store-%s' % database, config_path, args)
    target = Target(store.url + '/', lambda: process_tree(store.pid), db_pids)
    env = key_law_env(nkeys)
    nrw = '%d/%d/%d' % (info['replicas'], info['r'], info['w'])
    measured = measure_wrk(run, args, row_named('C-one'), target, env)
    measured.update(label='GET r=1, %d partitions, %s keys' % (count, '{:,}'.format(nkeys)),
                    partitions=count, keys=nkeys, load_s=seconds, nrw=nrw)
    rows = [measured]
    if listing:
        measured = measure_wrk(run, args, row_named('list'), target, env, connections=1)
        measured.update(label='a page of 1000 keys (GET /buckets/bench/keys?limit=1000), one client, '
                              '%d partitions, %s keys' % (count, '{:,}'.format(nkeys)),
                        partitions=count, keys=nkeys, load_s=None, nrw=nrw)
        rows.append(measured)
    store.stop()
    drop_database(cluster, database, count)
    return rows


def scaling_run(run, args):
    """GET r=1 with more keys and with more partitions; with the most keys, a
    listing page's latency for one client too."""
    keys = [int(k) for k in args.scaling_keys.split(',')]
    partitions = [int(p) for p in args.scaling_partitions.split(',')]
    configs = [(4, k) for k in keys] + [(p, keys[0]) for p in partitions if p != 4]
    facts = machine_facts()
    cluster = start_cluster(run, max(p for p, _ in configs), args)
    facts['mariadb'] = mariadb_facts(cluster)
    results = [_scaling_hello(run, args, lambda: [s.pid for s in cluster if s.pid])]
    for count, nkeys in configs:
        results += _scaling_configuration(run, args, cluster, count, nkeys, count == 4 and nkeys == max(keys))
    settings = {
        'rows': '%d s each after a %d s warm-up; wrk -t1 -c%d, pinned to CPU %s'
                % (args.duration, args.warmup, args.connections, args.wrk_cpu),
        'store': '%s; N = min(3, partitions), R = W = quorum; 2 partitions means N=2' % server_setting(args),
        'load': 'bulk_load: the engine renders the rows (SQLEngine._store), batched multi-row INSERTs, '
                'one thread per partition',
    }
    write_scaling(args.results_dir, results, facts, settings)
