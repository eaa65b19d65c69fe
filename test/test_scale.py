"""A partition added to a cluster under load (issue #27; the 16-partition
version is bench/scale.py's): six MariaDB partitions, two serve.py front ends
gossiping with the cluster secret, clients writing and reading through both;
a seventh partition joins (each front end's configuration changed and
reloaded with SIGHUP), sync.py runs until the rebalance is complete, and
every write a client saw acknowledged is readable, with its value, through
either front end."""
import http.client
import os
import random
import signal
import threading
import time
import unittest

import sync

from test import support
from test.mariadb import shared_cluster
from test.server import StoreServer
from test.sync_support import config_of, sync_once

SECRET = 'scale-test-cluster-secret-0123456789abcdef'
STORE = dict(backoff=0.3, max_backoff=1.0, connect_timeout=1.0, read_timeout=3.0)


def partitions_of(cluster, count):
    """count partitions, a database each, spread over the cluster's servers."""
    base = support.mariadb_partitions(cluster)
    servers = list(base.values())
    return {'p%d' % (i + 1): dict(servers[i % len(servers)], database=servers[0]['database'] + '_%d' % (i + 1))
            for i in range(count)}


class TestAPartitionJoinsUnderLoad(unittest.TestCase):
    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = partitions_of(self.cluster, 7)
        self.six = {name: fields for name, fields in self.partitions.items() if name != 'p7'}
        self.fronts = [StoreServer('', workers=2, threads=4) for _ in range(2)]
        self.write_configs(self.six)
        for front in self.fronts:
            front.start()

    def tearDown(self):
        for front in self.fronts:
            front.stop()
            front.cleanup()

    def write_configs(self, partitions):
        for i, front in enumerate(self.fronts):
            peer = self.fronts[1 - i]
            text = support.config_text(partitions, {'cluster': {
                'peers': '127.0.0.1:%d' % peer.port, 'secret': SECRET, 'gossip_interval': 0.5}}, **STORE)
            with open(front.config_path, 'w') as f:
                f.write(text)

    def request(self, front, method, path, body=None):
        conn = http.client.HTTPConnection('127.0.0.1', front.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers={'Content-Type': 'text/plain'} if body else {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def test_every_acknowledged_write_is_readable_after_a_seventh_partition_joins(self):
        # written: {key: its values, in the order written}; acknowledged: {key: the
        # index of the last one acknowledged}.  A write that failed may still have
        # been stored ("a failed write is not undone"), so a key may read as one
        # written after its last acknowledged value, never as one before it.
        acknowledged, written, lock, stop = {}, {}, threading.Lock(), threading.Event()
        failures = []

        def client(number):
            rng = random.Random(number)
            i = 0
            while not stop.is_set():
                i += 1
                front = self.fronts[i % 2]
                key = 'c%d-%d' % (number, rng.randrange(400))
                value = ('%d-%d' % (number, i)).encode()
                written.setdefault(key, []).append(value)   # each key has one client: no race
                try:
                    status, _ = self.request(front, 'PUT', '/buckets/scale/keys/' + key, value)
                except OSError as e:   # a reload closes connections: not acknowledged
                    failures.append(repr(e))
                    continue
                if status in (200, 201, 204):
                    with lock:
                        acknowledged[key] = len(written[key]) - 1
                else:
                    failures.append(status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(2)
            self.assertEqual(sync_once(config_of(self.six))[2], sync.CONVERGED)   # epoch 1
            time.sleep(1)
            self.write_configs(self.partitions)
            for front in self.fronts:
                os.kill(front.process.pid, signal.SIGHUP)   # reload: new workers read the seven
            seven = config_of(self.partitions)
            for _ in range(10):
                results, _, status = sync_once(seven)
                if results['rebalance'].counts.get('state') == 'complete':
                    break
            self.assertEqual((results['rebalance'].counts['epoch'], results['rebalance'].counts['state']),
                             (2, 'complete'), {r.name: r.summary for r in results.values()})
            time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        # Writes a front end made before its reload took the new ring: the next runs move them.
        for _ in range(3):
            if sync_once(seven)[2] == sync.CONVERGED:
                break
        self.assertGreater(len(acknowledged), 100, failures[:5])
        lost = {}
        for i, (key, index) in enumerate(sorted(acknowledged.items())):
            status, body = self.request(self.fronts[i % 2], 'GET', '/buckets/scale/keys/' + key)
            since = written[key][index:]   # the acknowledged value, or one written after it
            # 300: concurrent versions (a write coordinated under either ring
            # while the front ends reloaded) are siblings, one of them among them
            if not (status == 200 and body in since or status == 300 and any(v in body for v in since)):
                lost[key] = (status, body[:80], written[key][index])
        self.assertEqual(lost, {})
