"""What a run writes: results.json and results.md (the table, its legend, the
machine and settings, the profile's summary) and throughput.png; for
--scaling, scaling.json, scaling.md and scaling.png."""
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys

from bench.common import DISTURBED_CORES, MIB, ONE_WORKER, ROOT, log


# -- machine ------------------------------------------------------------------------------------

def command_output(cmd, strip=True):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        return out.strip() if strip else out.rstrip()
    except (OSError, subprocess.SubprocessError):
        return '(unavailable)'


def machine_facts():
    import importlib.metadata
    import web
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
    except OSError:
        pass
    wrk_version = command_output(['sh', '-c', 'wrk -v 2>&1 | head -1'])
    commit = command_output(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'])
    if command_output(['git', '-C', ROOT, 'status', '--porcelain', '--untracked-files=no']):
        commit += ' + uncommitted changes'
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
        nproc=command_output(['nproc']), cpu=cpu, free=command_output(['free', '-h'], strip=False),
        commit=commit, kernel=platform.release(), python=sys.version.split()[0], granian=importlib.metadata.version('granian'),
        webpy=getattr(web, '__version__', '?'),
        etcd=command_output(['etcd', '--version']).splitlines()[0] if shutil.which('etcd') else '(not installed)',
        wrk=wrk_version.split(' Copyright')[0])


# -- tables ---------------------------------------------------------------------------------------

def fmt(value, digits=2):
    if value is None:
        return '–'
    if isinstance(value, float) and value >= 100:
        return '{:,.0f}'.format(value)
    return '{:,.{}f}'.format(value, digits)


def ratio(a, b):
    return '%.2f×' % (a / b) if a and b else '–'


def flags(r):
    """† for a disturbed row, ‡ for one a single worker served."""
    return (' †' if r.get('disturbed') else '') + (' ‡' if r.get('one_worker') else '')


def split_text(r):
    return '/'.join(str(s) for s in r['split']) if r.get('split') else '–'


def _results_line(r, results, by_name):
    hello, etcd = by_name.get('hello'), by_name.get(r.get('etcd') or '')
    flag = flags(r)
    if len({x.get('measured') for x in results}) > 1:
        flag += ' (%s)' % (r.get('measured') or '?')[11:]
    if len({x.get('commit') for x in results}) > 1:
        flag += ' (%s)' % (r.get('commit') or '?')
    server = fmt(r['server_ms_per_req'], 3)
    if r['system'] == 'pymysql':
        server = '(client %s)' % fmt(r.get('client_ms_per_req'), 3)
    split = split_text(r) if r['system'] != 'etcd' else '–'
    return '| %s%s | %s | %d | %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
        r['name'], flag, r['what'], r['connections'], fmt(r['rps'], 0), fmt(r['p50_ms']), fmt(r['p99_ms']),
        fmt(r['p999_ms']), r['errors'], fmt(r['cpu_ms_per_req'], 3), server,
        fmt(r['db_ms_per_req'], 3), split,
        ('%.0f%%' % r['wrk_cpu_pct']) if r.get('wrk_cpu_pct') is not None else '–',
        r['deadlocks'] if r.get('deadlocks') is not None else '–',
        fmt(r.get('statements_per_req'), 2), fmt(r.get('commits_per_req'), 2), fmt(r.get('fsyncs_per_req'), 2),
        ratio(r['rps'], hello['rps']) if hello and r is not hello else '–',
        ratio(r['rps'], etcd['rps']) if etcd else '–',
        ratio(r['cpu_ms_per_req'], etcd['cpu_ms_per_req']) if etcd else '–')


def results_table(results):
    by_name = {r['name']: r for r in results}
    lines = ['| row | workload | conns | req/s | p50 ms | p99 ms | p99.9 ms | errors | CPU ms/req '
             '(server + db) | server | db | worker split | wrk CPU | dead-locks | statements/req | commits/req '
             '| fsyncs/req | req/s ÷ hello | req/s ÷ etcd | CPU ÷ etcd |',
             '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']
    lines += [_results_line(r, results, by_name) for r in results]
    return '\n'.join(lines)


def _scaling_line(r, hello_rps, first):
    load = '%.1f (%s)' % (r['load_s'], '{:,.0f}'.format(r['keys'] / r['load_s'])) if r['load_s'] else '–'
    return '| %s%s | %s | %s | %s | %s | %s | %s | %s | %d | **%s** | %s | %s | %s | %.0f%% | %s |' % (
        r['label'], flags(r), r['nrw'] or '–',
        '{:,}'.format(r['keys']) if r['keys'] else '–', load, fmt(r['rps'], 0), fmt(r['p50_ms']),
        fmt(r['p99_ms']), fmt(r['p999_ms']), r['errors'], fmt(r['cpu_ms_per_req'], 3),
        fmt(r['server_ms_per_req'], 3), fmt(r['db_ms_per_req'], 3), split_text(r), r['wrk_cpu_pct'] or 0,
        ratio(r['rps'], hello_rps) if not first else '–')


def scaling_table(results):
    """The scaling rows; the first is the hello world the others are compared with."""
    lines = ['| configuration | N/R/W | keys | load s (keys/s) | req/s | p50 ms | p99 ms | p99.9 ms | errors '
             '| CPU ms/req (server + db) | server | db | worker split | wrk CPU | req/s ÷ hello |',
             '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']
    lines += [_scaling_line(r, results[0]['rps'], i == 0) for i, r in enumerate(results)]
    return '\n'.join(lines)


# What a batch row must cost per key, as a share of a single request's CPU (issue 25).
BATCH_TARGETS = {'C-quorum': 0.1, 'W-quorum': 0.2}


def batches_section(results):
    """Each batch row's CPU per key beside its single requests' CPU per request."""
    by_name = {r['name']: r for r in results}
    rows = [r for r in results if r.get('versus') and r['versus'] in by_name and r.get('cpu_ms_per_req')]
    if not rows:
        return []
    lines = ['## Batches, key for key', '',
             'A batch row\'s CPU (server + databases) per key it reads or writes, beside the CPU per request',
             'of the same operation sent alone; the issue\'s target is the share in the last column.', '',
             '| batch row | keys per request | CPU ms/key | single row | CPU ms/req | batch ÷ single | target |',
             '|---|--:|--:|---|--:|--:|--:|']
    for r in rows:
        single = by_name[r['versus']]
        per_key = r['cpu_ms_per_req'] / r['per_request']
        lines.append('| %s | %d | %s | %s | %s | %.3f | < %s |' % (
            r['name'], r['per_request'], fmt(per_key, 4), single['name'], fmt(single['cpu_ms_per_req'], 3),
            per_key / single['cpu_ms_per_req'], BATCH_TARGETS.get(single['name'], '–')))
    return lines + ['']


def queries_section(queries):
    """What one request costs, one at a time (workloads.queries_per_request)."""
    if not queries:
        return []
    return (['## What one request costs, one at a time', '',
             'Counted in process (the datastore without its HTTP layer), one request at a time on 300 keys of a',
             'bucket of their own: the queries the engines send (round trips), the statements, commits and',
             'fsyncs the databases count (`Questions`, `Com_commit`, `Innodb_data_fsyncs`, summed over every',
             'partition, background work included), and the CPU of the databases and of the front end per request.',
             '',
             '| request | round trips | statements | commits | fsyncs | db CPU ms | front end CPU ms |',
             '|---|--:|--:|--:|--:|--:|--:|']
            + ['| %s | %s |' % (name, ' | '.join(('%.3f' if i >= len(counts) - 2 else '%.2f') % c
                                                for i, c in enumerate(counts)))
               for name, counts in queries.items()]
            + [''])


def facts_section(facts, settings):
    mariadb = facts.get('mariadb') or {}
    lines = queries_section(facts.get('queries')) + ['## Machine', '',
             '- date: %s' % facts['date'],
             '- kvstore commit: %s' % facts.get('commit', '?'),
             '- `nproc`: %s (%s), kernel %s' % (facts['nproc'], facts['cpu'], facts['kernel']),
             '- Python %s, Granian %s, web.py %s' % (facts['python'], facts.get('granian', '?'), facts['webpy']),
             '- MariaDB: %s' % (mariadb.get('version', '(not started)')),
             '- etcd: %s' % facts['etcd'],
             '- wrk: %s' % facts['wrk'],
             '', '`free -h`:', '', '```', facts['free'], '```', '',
             '## Settings', '']
    lines += ['- %s: %s' % (k, v) for k, v in settings.items()]
    if mariadb:
        lines.append('- MariaDB servers (test/mariadb.py, then SET GLOBAL): innodb_buffer_pool_size %d MiB, '
                     'innodb_log_file_size %d MiB, innodb_flush_log_at_trx_commit=%s, innodb_doublewrite=%s, '
                     'log_bin=%s, max_allowed_packet %d MiB'
                     % (mariadb['buffer_pool'] // MIB, mariadb['log_file_size'] // MIB,
                        mariadb['flush_log_at_trx_commit'], mariadb.get('doublewrite', '?'),
                        mariadb.get('log_bin', '?'), mariadb['max_allowed_packet'] // MIB))
    return '\n'.join(lines)


LEGEND = """\
How to read it:

- **CPU ms/req** is the CPU time (user + system, from `/proc/<pid>/stat`) that
  the server (Granian's master and workers, or etcd) and the databases (every
  mariadbd) spent during the row, divided by the requests answered.  With two
  cores shared by everything, it is the number to compare; req/s follows from
  it once the cores are full.  For `pymysql` it is mariadbd's CPU per query;
  the Python client's own CPU is shown beside it.
- latency percentiles are wrk's (closed loop: each connection sends its next
  request when the last one is answered); `pymysql` times each query.
- **errors** counts responses outside 2xx (and 2xx bodies without the
  expected content, e.g. an etcd range without `kvs`) plus socket errors.
- **wrk CPU** is wrk's own CPU (one thread, pinned to one CPU) as a share of
  one core: far from 100 %% means wrk was not the bottleneck.
- **dead-locks** are InnoDB's (`Innodb_deadlocks`) during the row, summed
  over the databases: each one a transaction the store retried.
  **statements/req**, **commits/req** and **fsyncs/req** are the
  databases' `Questions` (every statement a client sent, each of a
  multi-statement's), `Com_commit` (COMMIT statements: an autocommit
  write counts none) and `Innodb_data_fsyncs` (InnoDB's fsyncs of its log
  and data files, autocommit writes' and background flushing's included),
  over the row's requests.
- **req/s ÷ hello** compares with the web.py hello world under the same
  server settings; **÷ etcd** with etcd's matching operation (range for
  GET, put for PUT, the same mixes, a 1000-key range for listing).
- **floor** is the hello world plus one primary-key SELECT on the key's
  first owner through the store's engine, and nothing else of the store:
  no GET r=one can cost less on this stack.
- † marks a row during which other processes on the machine (or the
  hypervisor, as steal time) took more than %.2f cores (measured from
  /proc/stat): its numbers are suspect.
- **worker split**: the share of the server's CPU each process took,
  busiest first (under Granian the workers, each holding the connections
  it accepted).  Under gunicorn gthread a worker
  keeps the keep-alive connections it accepted, and wrk opens all its
  connections at once: often one worker wins nearly all of them and the
  other idles.  Such a row is run again (up to
  --retries times); ‡ marks one that stayed unbalanced (one worker above
  %d %%).  It costs more than throughput: one worker's threads then contend for
  its GIL, so even the CPU per request rises.
- 1 MiB rows use a quarter of the connections.
- Durability: these MariaDB servers run with innodb_flush_log_at_trx_commit=1,
  as docs/OPERATIONS.md asks of production (each commit's redo log fsynced
  before it returns, on each of the W replicas that acknowledge a write), no
  binary log; etcd fsyncs its WAL on every write (docs/SPEED.md).
""" % (DISTURBED_CORES, ONE_WORKER)


# -- the profile ---------------------------------------------------------------------------------

LAYERS = (  # (leaf file prefix, layer), first match wins
    ('gunicorn/', 'gunicorn (HTTP server)'), ('web/', 'web.py'), ('mimerender', 'content negotiation'),
    ('mimeparse', 'content negotiation'), ('pymysql/', 'PyMySQL'), ('concurrent/', 'thread hand-offs'),
    ('threading.py', 'thread hand-offs'), ('queue.py', 'thread hand-offs'), ('json/', 'JSON'),
    ('controller.py', 'controller.py'), ('datastore.py', 'datastore.py'),
    ('mysqlwire.py', 'kvstore/engines/mysqlwire.py'), ('kvstore/engines/', 'kvstore/engines/'),
    ('versions.py', 'kvstore/coordinator/versions.py'), ('ring.py', 'kvstore/coordinator/ring.py'),
    ('kvstore/coordinator/', 'kvstore/coordinator/ (other)'), ('kvstore/http/', 'kvstore/http/'),
    ('socket.py', 'sockets'), ('selectors.py', 'sockets'), ('ssl.py', 'sockets'),
)


def _function(frame):
    """'name (file:line)' -> 'name (file)'."""
    head, _, where = frame.rpartition(' (')
    return '%s (%s)' % (head, where.split(':')[0]) if head else frame


def _stacks(path):
    """(frames, samples) of each stack of py-spy's raw output, outermost frame first."""
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            if not count.isdigit():
                continue
            frames = [_function(fr) for fr in stack.split(';') if fr and not fr.startswith('process ')
                      and not fr.startswith('thread ')]
            if frames:
                yield frames, int(count)


def summarise_profile(path):
    """Sample shares: self and inclusive per function, self per layer (py-spy raw output)."""
    self_counts, inclusive, layers, total = {}, {}, {}, 0
    for frames, count in _stacks(path):
        total += count
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        leaf_file = leaf.rpartition(' (')[2].rstrip(')')
        layer = next((name for prefix, name in LAYERS if prefix in leaf_file), 'other Python')
        layers[layer] = layers.get(layer, 0) + count
    top = lambda d, n: [(k, 100.0 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]
    return dict(samples=total, self=top(self_counts, 20), inclusive=top(inclusive, 30), layers=top(layers, 20))


def profile_section(profile):
    if not profile:
        return ''
    lines = ['', '## Profile of the store under %s (py-spy)' % profile['row'], '',
             '%d samples, taken at 200 Hz in every worker, of the thread holding the GIL '
             '(`py-spy record --subprocesses --gil --nonblocking`): where the workers\' Python time goes. '
             'Flame graph: `%s`.' % (profile['samples'], profile['svg']), '',
             '| self % | layer (file of the innermost frame) |', '|--:|---|']
    lines += ['| %.1f | %s |' % (share, name) for name, share in profile['layers']]
    lines += ['', '| self % | function (file) |', '|--:|---|']
    lines += ['| %.1f | `%s` |' % (share, frame) for frame, share in profile['self']]
    lines += ['', '| inclusive % | function (file) |', '|--:|---|']
    lines += ['| %.1f | `%s` |' % (share, frame) for frame, share in profile['inclusive']]
    return '\n'.join(lines) + '\n'


# -- the plot --------------------------------------------------------------------------------------

COLORS = {'store': '#1f77b4', 'hello': '#2ca02c', 'floor': '#8c564b', 'etcd': '#ff7f0e', 'pymysql': '#9467bd'}
SYSTEM_NAMES = {'store': 'kvstore', 'hello': 'web.py hello world', 'floor': 'hello world + one SELECT',
                'etcd': 'etcd', 'pymysql': 'PyMySQL SELECT loop'}


def _bars(axis, results, values, label, digits):
    """One panel: a bar per row, its value written beside it; log scale for wide ranges."""
    axis.barh(range(len(results)), [v or 0 for v in values],
              color=[COLORS.get(r['system'], 'grey') for r in results])
    shown = [v for v in values if v]
    if shown and max(shown) / min(shown) > 20:
        axis.set_xscale('log')
        label += ' (log scale)'
    axis.set_xlabel(label)
    for i, value in enumerate(values):
        if value:
            axis.text(value, i, ' %s' % fmt(value, digits), va='center', fontsize=8)


def plot(results, path, title, label=lambda r: r['name']):
    """Requests per second and CPU per request of each row, side by side."""
    try:
        import matplotlib
    except ImportError:
        log('matplotlib not installed (pip install -r requirements-bench.txt): no %s', os.path.basename(path))
        return
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.42 * len(results) + 1.8), sharey=True)
    _bars(left, results, [r['rps'] for r in results], 'requests per second', 0)
    left.set_yticks(list(range(len(results))))
    left.set_yticklabels([label(r) for r in results])
    left.invert_yaxis()
    _bars(right, results, [r['cpu_ms_per_req'] for r in results], 'CPU ms per request, server + databases', 3)
    present = [k for k in COLORS if any(r['system'] == k for r in results)]
    height = fig.get_figheight()
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in present], [SYSTEM_NAMES[k] for k in present],
               loc='lower center', ncol=len(present), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the files -------------------------------------------------------------------------------------

def merge_previous(results_dir, results, profile):
    """Rows measured now replace the same rows of the last results.json; the
    rest stay (--merge).  The profile too, if none was taken now."""
    previous_path = os.path.join(results_dir, 'results.json')
    if not os.path.exists(previous_path):
        return profile
    with open(previous_path) as f:
        previous = json.load(f)
    for r in previous.get('results', []):
        results.setdefault(r['name'], r)
    log('merged with the rows of %s', previous_path)
    return profile if profile is not None else previous.get('profile')


def command_line():
    return 'bench/run.py%s' % (' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else '')


def feed_section(results):
    """The change feed's lag under a row's writes: from a probe write's acknowledgement to its delivery."""
    rows = [r for r in results if r.get('lag_samples') is not None]
    if not rows:
        return ''
    lines = ['## The change feed', '',
             'A reader follows the bucket (Server-Sent Events) during the row; a probe PUTs 20 keys a second '
             'beside wrk, and the lag is from each probe\'s acknowledgement to its delivery. Compare the '
             'row\'s req/s and p99 with W-quorum\'s for what the feed costs a write.', '',
             '| row | lag p50 ms | lag p99 ms | probes | not delivered | changes delivered |', '|---|--:|--:|--:|--:|--:|']
    lines += ['| %s | %s | %s | %d | %d | %d |' % (r['name'], fmt(r['lag_p50_ms']), fmt(r['lag_p99_ms']),
                                                  r['lag_samples'], r['lag_missing'], r['feed_changes'])
              for r in rows]
    return '\n'.join(lines) + '\n'


def write_results(results_dir, ordered, facts, settings, profile):
    """results.json, results.md and throughput.png of a main run."""
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, 'results.json'), 'w') as f:
        json.dump(dict(facts=facts, settings=settings, results=ordered, profile=profile), f, indent=1)
    text = ['# kvstore benchmark', '',
            'Written by `%s` (issue 6). The benchmark only reports; nothing here is asserted.' % command_line(), '',
            results_table(ordered), '', feed_section(ordered)] + batches_section(ordered) + [
            LEGEND, profile_section(profile), facts_section(facts, settings)]
    with open(os.path.join(results_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(text) + '\n')
    plot(ordered, os.path.join(results_dir, 'throughput.png'),
         'kvstore vs references, %s, %s cores' % (facts['date'][:10], facts['nproc']))
    log('wrote %s', os.path.join(results_dir, 'results.md'))
    print(results_table(ordered))


def write_scaling(results_dir, results, facts, settings):
    """scaling.json, scaling.md and scaling.png of a --scaling run."""
    table = scaling_table(results)
    lines = ['# kvstore benchmark: scaling of GET r=1', '',
             'Written by `bench/run.py %s`. The same zipfian GET r=one workload (1 KiB values) with more '
             'keys and with more partitions (all servers on this one machine); with the most keys, also '
             'the latency of a page of 1000 keys for one client (wrk -c1).' % ' '.join(sys.argv[1:]), '',
             table, '', LEGEND, facts_section(facts, settings)]
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, 'scaling.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(results_dir, 'scaling.json'), 'w') as f:
        json.dump(dict(facts=facts, settings=settings, results=results), f, indent=1)
    plot(results, os.path.join(results_dir, 'scaling.png'), 'kvstore GET r=1 scaling, %s' % facts['date'][:10],
         label=lambda r: r['label'])
    log('wrote %s', os.path.join(results_dir, 'scaling.md'))
    print(table)
