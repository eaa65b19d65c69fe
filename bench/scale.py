"""A cluster on one host (issue #27): 16 MariaDB partitions (private mariadbd
servers, 32 MB buffer pools), 4 serve.py front ends gossiping with the
cluster secret, clients spread over all four; a 17th partition added under
load with sync.py run until the rebalance is complete; then one partition
killed.  It only reports.

    .venv/bin/python bench/scale.py [--partitions 16] [--front-ends 4] [--seconds 20] [--clients 12]

Writes bench/results/scale.json and scale.md.  The test suite's smaller
version is test/test_scale.py.
"""
import argparse
import http.client
import json
import os
import random
import signal
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
os.environ.setdefault('WEBPY_ENV', 'test')   # the harness's database names, for the servers and sync.py alike

import sync  # noqa: E402
from test import support  # noqa: E402
from test.mariadb import MariaDBCluster  # noqa: E402
from test.server import StoreServer  # noqa: E402
from test.sync_support import config_of, sync_once  # noqa: E402

RESULTS = os.path.join(HERE, 'bench', 'results')
SECRET = 'bench-scale-cluster-secret-0123456789abcdef'
STORE = dict(backoff=1.0, max_backoff=5.0, connect_timeout=1.0, read_timeout=3.0)


class Load:
    """Clients writing and reading through every front end in turn, each
    request timed; what was acknowledged is remembered."""

    def __init__(self, fronts, clients):
        self.fronts, self.clients = fronts, clients
        self.samples = []            # (time, seconds, method, ok)
        self.acknowledged = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def client(self, number):
        rng = random.Random(number)
        conns = {}
        i = 0
        while not self.stop.is_set():
            i += 1
            front = self.fronts[i % len(self.fronts)]
            write = rng.random() < 0.5 or not self.acknowledged
            key = 'c%d-%d' % (number, rng.randrange(2000)) if write else rng.choice(list(self.acknowledged))
            value = ('%d-%d' % (number, i)).encode()
            started = time.monotonic()
            try:
                conn = conns.get(front.port) or http.client.HTTPConnection('127.0.0.1', front.port, timeout=15)
                conns[front.port] = conn
                if write:
                    conn.request('PUT', '/buckets/scale/keys/' + key, body=value,
                                 headers={'Content-Type': 'text/plain'})
                else:
                    conn.request('GET', '/buckets/scale/keys/' + key)
                response = conn.getresponse()
                response.read()
                ok = response.status < 500
                if write and response.status in (200, 201, 204):
                    with self.lock:
                        self.acknowledged[key] = value
            except (OSError, http.client.HTTPException):
                conns.pop(front.port, None)
                ok = False
            self.samples.append((time.monotonic(), time.monotonic() - started, 'PUT' if write else 'GET', ok))

    def between(self, start, end):
        found = [s for s in self.samples if start <= s[0] < end]
        latencies = sorted(s[1] for s in found)
        return {'requests': len(found), 'per_second': round(len(found) / max(end - start, 1e-9), 1),
                'errors': sum(1 for s in found if not s[3]),
                'p50_ms': round(1000 * statistics.median(latencies), 1) if latencies else None,
                'p99_ms': round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None}


def front_end_configs(fronts, partitions):
    for i, front in enumerate(fronts):
        peers = ','.join('127.0.0.1:%d' % f.port for f in fronts if f is not front)
        text = support.config_text(partitions, {'cluster': {'peers': peers, 'secret': SECRET,
                                                            'gossip_interval': 1.0}}, **STORE)
        with open(front.config_path, 'w') as f:
            f.write(text)


def cluster_state(front, partition):
    conn = http.client.HTTPConnection('127.0.0.1', front.port, timeout=5)
    try:
        conn.request('GET', '/cluster', headers={'Accept': 'application/json'})
        document = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return next(p['state'] for p in document['partitions'] if p['name'] == partition)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--partitions', type=int, default=16)
    parser.add_argument('--front-ends', type=int, default=4)
    parser.add_argument('--seconds', type=float, default=20)
    parser.add_argument('--clients', type=int, default=12)
    args = parser.parse_args()
    report = {'partitions': args.partitions, 'front_ends': args.front_ends, 'clients': args.clients,
              'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    started = time.monotonic()
    cluster = MariaDBCluster(count=args.partitions + 1)
    cluster.start()
    report['servers_started_seconds'] = round(time.monotonic() - started, 1)
    fronts = []
    try:
        every = {'p%d' % (i + 1): {'engine': 'mysql', 'host': s.host, 'port': s.port, 'user': s.user,
                                   'password': s.password, 'database': 'kvscale'}
                 for i, s in enumerate(cluster.servers)}
        old = {n: f for n, f in every.items() if n != 'p%d' % (args.partitions + 1)}
        fronts = [StoreServer('', workers=2, threads=8) for _ in range(args.front_ends)]
        front_end_configs(fronts, old)
        for front in fronts:
            front.start()
        sync_once(config_of(old))   # records epoch 1
        load = Load(fronts, args.clients)
        load.start()
        time.sleep(args.seconds)
        report['before'] = load.between(time.monotonic() - args.seconds, time.monotonic())

        # A partition joins: every front end's configuration, reloaded; sync.py until complete.
        joined = time.monotonic()
        front_end_configs(fronts, every)
        for front in fronts:
            os.kill(front.process.pid, signal.SIGHUP)
        runs, moved = [], 0
        while True:
            results, meter, status = sync_once(config_of(every))
            counts = results['rebalance'].counts
            moved += counts.get('keys_moved', 0) + counts.get('keys_repaired', 0)
            runs.append({'status': sync.STATUS_WORDS[status], 'summary': results['rebalance'].summary})
            if counts.get('state') == 'complete' or len(runs) >= 10:
                break
        rebalanced = time.monotonic()
        report['rebalance'] = {'seconds': round(rebalanced - joined, 1), 'runs': runs,
                               'keys_moved_or_copied': moved,
                               'keys_per_second': round(moved / max(rebalanced - joined, 1e-9), 1)}
        report['during'] = load.between(joined, rebalanced)
        time.sleep(args.seconds)
        report['after'] = load.between(time.monotonic() - args.seconds, time.monotonic())
        load.finish()
        for _ in range(3):   # writes a front end made under the old ring while it reloaded
            if sync_once(config_of(every))[2] == sync.CONVERGED:
                break
        lost = []
        for i, (key, value) in enumerate(sorted(load.acknowledged.items())):
            conn = http.client.HTTPConnection('127.0.0.1', fronts[i % len(fronts)].port, timeout=15)
            conn.request('GET', '/buckets/scale/keys/' + key)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if not (response.status == 200 and body == value or response.status == 300 and value in body):
                lost.append(key)
        report['acknowledged'] = {'writes': len(load.acknowledged), 'unreadable_afterwards': len(lost)}

        # One partition killed: until every front end treats it as down.
        victim = 'p2'
        load = Load(fronts, args.clients)
        load.start()
        time.sleep(2)
        killed = time.monotonic()
        cluster.servers[1].kill()
        down_at = {}
        while len(down_at) < len(fronts) and time.monotonic() - killed < 60:
            for i, front in enumerate(fronts):
                if i not in down_at and cluster_state(front, victim) != 'up':
                    down_at[i] = round(time.monotonic() - killed, 2)
            time.sleep(0.1)
        everyone = time.monotonic()
        time.sleep(2)
        load.finish()
        report['partition_killed'] = {
            'every_front_end_down_after_seconds': max(down_at.values()) if len(down_at) == len(fronts) else None,
            'each_front_end': down_at,
            'until_then': load.between(killed, everyone), 'before': load.between(killed - 2, killed),
            'after': load.between(everyone, everyone + 2)}
    finally:
        for front in fronts:
            front.stop()
            front.cleanup()
        cluster.stop(graceful=False)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'scale.json'), 'w') as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == '__main__':
    main()
