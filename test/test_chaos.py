"""Chaos: compare-and-swap and plain writes while everything around them fails.

Two front ends, A and B (serve.py under uWSGI, as `make run` starts it), over
four real MariaDB partitions.  Ten clients, spread over both, either increment
one counter with If-Match (GET, then PUT the value + 1 with the ETag; on 412
read again) or write keys of their own.  Meanwhile:

- a uWSGI worker of either front end is SIGKILLed every 1 to 2 s (the master
  starts another);
- the mariadbd holding the counter's first owner is SIGSTOPped for 1.5 s every
  3 to 5 s;
- B reaches that partition through a proxy that the test black-holes for 2 to
  3 s every 3 to 5 s, so that B finds it down while A finds it up: the two
  front ends hold different views of partition health.

At the end every fault is undone and the counter must equal the acknowledged
increments plus at most the attempts whose outcome the client could not know
(a 5xx, a timeout, a broken connection), with no siblings, and every
acknowledged key must read back with its value.
"""
import collections
import http.client
import json
import os
import random
import select
import signal
import socket
import threading
import time
import traceback
import unittest
import uuid

from kvstore.coordinator.ring import Ring
from test import support
from test.mariadb import shared_cluster
from test.server import StoreServer

CHAOS_SECONDS = 40.0          # how long the clients and the faults run
REQUEST_TIMEOUT = 5.0         # a client's wait for any one answer
QUIET_TIMEOUT = 30.0          # how long the end waits for the store to answer again
READ_BACK_TIMEOUT = 60.0      # how long the end may take to read every acknowledged key
WRITE_INTERVAL = 0.05         # a key writer's pace at most, so that the end reads back a few thousand
INCREMENTERS, WRITERS = 7, 3  # client threads
WORKERS, THREADS = 3, 4       # per front end
STORE = dict(connect_timeout=0.5, read_timeout=1.0, backoff=0.25, max_backoff=2.0)
KILL_EVERY = (1.0, 2.0)       # seconds between worker kills
PAUSE_EVERY, PAUSE_SECONDS = (3.0, 5.0), 1.5
BLACK_HOLE_EVERY, BLACK_HOLE_SECONDS = (3.0, 5.0), (2.0, 3.0)
BUCKET, COUNTER = 'chaos', 'counter'


class BlackHoleProxy:
    """A TCP proxy to a port on 127.0.0.1 that can be black-holed.

    While black-holed nothing is forwarded either way and new connections are
    accepted but never answered, as on a path that drops every packet; the
    connections that lived through it are closed when it ends, as their peers
    would have reset them by then.
    """

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.forwarding, self.stopped = threading.Event(), threading.Event()
        self.forwarding.set()
        self.epoch = 0   # black holes so far
        self.relays = []
        self.accepter = threading.Thread(target=self._accept, name='proxy-accept', daemon=True)
        self.accepter.start()

    def black_hole(self):
        self.forwarding.clear()
        self.epoch += 1

    def heal(self):
        self.forwarding.set()

    def close(self):
        """Stop; returns the threads still running (none, normally)."""
        self.stopped.set()
        self.forwarding.set()
        self.accepter.join(5)
        for relay in self.relays:
            relay.join(5)
        self.listener.close()
        return [t for t in [self.accepter] + self.relays if t.is_alive()]

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:   # the timeout, or the listener closed
                continue
            relay = threading.Thread(target=self._relay, args=(client,), name='proxy-relay', daemon=True)
            self.relays = [r for r in self.relays if r.is_alive()] + [relay]
            relay.start()

    def _relay(self, client):
        upstream = None
        try:
            while not self.forwarding.is_set():   # accepted inside a black hole: not answered
                if self.stopped.is_set():
                    return
                self.forwarding.wait(0.2)
            epoch = self.epoch
            client.settimeout(REQUEST_TIMEOUT)
            upstream = socket.create_connection(('127.0.0.1', self.upstream_port), timeout=REQUEST_TIMEOUT)
            while not self.stopped.is_set():
                if not self.forwarding.is_set():
                    self.forwarding.wait(0.2)
                    continue
                if self.epoch != epoch:
                    return
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()


class Client:
    """One kept-alive connection to a front end, opened again after any failure."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        """(status, response, body); OSError or HTTPException when no answer came."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=REQUEST_TIMEOUT)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, response, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def key_path(key, query=''):
    return '/buckets/%s/keys/%s%s' % (BUCKET, key, query)


class TestChaos(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cluster = shared_cluster(4)
        partitions = support.mariadb_partitions(cls.cluster)
        cls.owners = Ring.of(support.build_config(partitions, **STORE)).preference_list(BUCKET, COUNTER, 3)
        first = cls.owners[0]
        cls.paused = cls.cluster[int(first[1:]) - 1]
        cls.proxy = BlackHoleProxy(partitions[first]['port'])
        cut_off = dict(partitions, **{first: dict(partitions[first], host='127.0.0.1', port=cls.proxy.port)})
        cls.servers = []
        try:
            for parts in (partitions, cut_off):
                server = StoreServer(support.config_text(parts, **STORE), workers=WORKERS, threads=THREADS)
                cls.servers.append(server)
                server.start()
        except BaseException:
            cls.tearDownClass()
            raise
        cls.front_a, cls.front_b = cls.servers

    @classmethod
    def tearDownClass(cls):
        for server in getattr(cls, 'servers', []):
            server.stop()
            server.cleanup()
        cls.proxy.close()
        shared_cluster(4)   # resumes a paused server, should the test have left one

    def setUp(self):
        self.stop = threading.Event()
        self.errors = []                          # tracebacks from the test's own threads
        self.faults = collections.Counter()
        self.acknowledged_keys = {}               # key: value, for the keys a writer was told were stored
        self.unexpected = []                      # answers no client should see

    def guarded(self, function, *args):
        """A thread's target that records whatever it raises."""
        def run():
            try:
                function(*args)
            except BaseException:
                self.errors.append(traceback.format_exc())
        return run

    # -- clients ------------------------------------------------------------

    def increment(self, client, stats, deadline):
        """If-Match increments of the counter until the deadline."""
        while time.monotonic() < deadline:
            try:
                status, response, body = client.request('GET', key_path(COUNTER))
            except (OSError, http.client.HTTPException):
                stats['reads without an answer'] += 1
                time.sleep(0.05)
                continue
            headers = {'Content-Type': 'text/plain'}
            if status == 200:
                value, headers['If-Match'] = int(body), response.getheader('ETag')
            elif status == 300:
                # Concurrent writes left siblings: resolve them with the largest
                # value + 1, as a client could (any sibling's ETag matches).
                stats['reads answered 300'] += 1
                siblings = json.loads(body)['siblings']
                value = max(int(s['value']) for s in siblings)
                headers['If-Match'] = siblings[0]['etag']
                headers['X-Context'] = response.getheader('X-Context')
            else:
                stats['reads answered %d' % status] += 1
                time.sleep(0.05)
                continue
            stats['increments tried'] += 1
            try:
                status, response, body = client.request('PUT', key_path(COUNTER), str(value + 1).encode(), headers)
            except (OSError, http.client.HTTPException):
                stats['increments unknown'] += 1
                continue
            if status in (200, 201):
                stats['increments acknowledged'] += 1
            elif status == 412:
                stats['increments refused'] += 1
            elif status >= 500:
                stats['increments unknown'] += 1
                stats['increments answered %d' % status] += 1
            else:
                self.unexpected.append('PUT counter: %d %r' % (status, body[:300]))

    def write_keys(self, client, name, stats, deadline):
        """PUTs of keys of this writer's own until the deadline."""
        next_write = time.monotonic()
        for i in range(10 ** 9):
            time.sleep(max(0.0, next_write - time.monotonic()))
            next_write = time.monotonic() + WRITE_INTERVAL
            if next_write - WRITE_INTERVAL >= deadline:
                return
            key, value = '%s-%d' % (name, i), uuid.uuid4().hex.encode()
            stats['writes tried'] += 1
            try:
                status, response, body = client.request('PUT', key_path(key), value, {'Content-Type': 'text/plain'})
            except (OSError, http.client.HTTPException):
                stats['writes unknown'] += 1
                continue
            if status in (200, 201):
                stats['writes acknowledged'] += 1
                self.acknowledged_keys[key] = value
            elif status >= 500:
                stats['writes unknown'] += 1
                stats['writes answered %d' % status] += 1
            else:
                self.unexpected.append('PUT %s: %d %r' % (key, status, body[:300]))

    # -- faults -------------------------------------------------------------

    def repeat(self, name, interval, fault):
        """fault() every interval (a range of seconds) until stopped."""
        rng = random.Random()
        while not self.stop.wait(rng.uniform(*interval)):
            fault(rng)
            self.faults[name] += 1

    def kill_a_worker(self, rng):
        pids = rng.choice(self.servers).worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def pause_the_first_owner(self, rng):
        self.paused.pause()
        try:
            self.stop.wait(PAUSE_SECONDS)
        finally:
            self.paused.resume()

    def black_hole_b(self, rng):
        self.proxy.black_hole()
        try:
            self.stop.wait(rng.uniform(*BLACK_HOLE_SECONDS))
        finally:
            self.proxy.heal()

    # -- the end ------------------------------------------------------------

    def read_when_quiet(self, client, key, deadline):
        """(status, response, body) of a GET with r=all once it answers 200,
        300 or 404, or the last answer at the deadline (a monotonic time)."""
        while True:
            try:
                status, response, body = client.request('GET', key_path(key, '?r=all'))
                if status in (200, 300, 404) or time.monotonic() > deadline:
                    return status, response, body
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def test_no_acknowledged_write_is_lost_and_compare_and_swap_holds(self):
        client = Client(self.front_a.port)
        status, _, body = client.request('PUT', key_path(COUNTER, '?w=all'), b'0', {'Content-Type': 'text/plain'})
        self.assertEqual(status, 201, body)

        stats = [collections.Counter() for _ in range(INCREMENTERS + WRITERS)]
        fronts = [self.front_a.port, self.front_b.port]
        deadline = time.monotonic() + CHAOS_SECONDS
        clients = [Client(fronts[i % 2]) for i in range(INCREMENTERS + WRITERS)]
        workers = [threading.Thread(target=self.guarded(self.increment, clients[i], stats[i], deadline),
                                    name='incrementer-%d' % i) for i in range(INCREMENTERS)]
        workers += [threading.Thread(target=self.guarded(self.write_keys, clients[i], 'w%d' % i, stats[i], deadline),
                                     name='writer-%d' % i) for i in range(INCREMENTERS, INCREMENTERS + WRITERS)]
        faults = [threading.Thread(target=self.guarded(self.repeat, name, interval, fault), name=name)
                  for name, interval, fault in (('worker kills', KILL_EVERY, self.kill_a_worker),
                                                ('pauses', PAUSE_EVERY, self.pause_the_first_owner),
                                                ('black holes', BLACK_HOLE_EVERY, self.black_hole_b))]
        try:
            for thread in workers + faults:
                thread.start()
            # A PUT after a GET, each at most REQUEST_TIMEOUT: then every client is done.
            for thread in workers:
                thread.join(max(0.0, deadline + 3 * REQUEST_TIMEOUT - time.monotonic()))
        finally:
            self.stop.set()
            for thread in faults:
                thread.join(PAUSE_SECONDS + 10)
            self.paused.resume()
            self.proxy.heal()
            for c in clients:
                c.close()
        self.assertEqual([t.name for t in workers + faults if t.is_alive()], [])
        self.assertEqual(self.errors, [])

        # Quiet: every worker back, every fault undone; read what the store holds.
        self.assertTrue(support.wait_until(
            lambda: all(len(s.worker_pids()) == WORKERS for s in self.servers), QUIET_TIMEOUT, 0.2))
        total = sum(stats, collections.Counter())
        status, response, body = self.read_when_quiet(client, COUNTER, time.monotonic() + QUIET_TIMEOUT)
        if status == 300:   # siblings: the largest value is what a client would keep
            final = max(int(s['value']) for s in json.loads(body)['siblings'])
        else:
            self.assertEqual(status, 200, body)
            final = int(body)
        missing, doubled = [], []   # keys without their value; keys with it in siblings
        read_back = time.monotonic() + READ_BACK_TIMEOUT
        for key, value in sorted(self.acknowledged_keys.items()):
            key_status, _, key_body = self.read_when_quiet(client, key, read_back)
            if key_status == 300 and all(s['value'].encode() == value for s in json.loads(key_body)['siblings']):
                doubled.append('%s: %s' % (key, key_body.decode()))
            elif (key_status, key_body) != (200, value):
                missing.append('%s: %d %r' % (key, key_status, key_body[:300]))
        client.close()

        acknowledged = total['increments acknowledged'] + total['writes acknowledged']
        unknown = total['increments unknown'] + total['writes unknown']
        lost_increments = max(0, total['increments acknowledged'] - final)
        lost = lost_increments + len(missing)
        print('chaos: operations %d, acknowledged %d, unknown outcome %d, lost %d '
              '(increments: %d acknowledged, %d unknown, %d refused with 412, final value %d, '
              'reads answered 300: %d; keys: %d acknowledged, %d not read back, %d with siblings; faults: %s)'
              % (total['increments tried'] + total['writes tried'], acknowledged, unknown, lost,
                 total['increments acknowledged'], total['increments unknown'], total['increments refused'],
                 final, total['reads answered 300'], total['writes acknowledged'], len(missing), len(doubled),
                 ', '.join('%d %s' % (n, name) for name, n in sorted(self.faults.items()))))
        details = dict(total)
        self.assertEqual(lost_increments, 0, '%d acknowledged increments lost: %r' % (lost_increments, details))
        self.assertNotEqual(status, 300, 'the counter has siblings: %r' % body[:1000])
        self.assertLessEqual(final, total['increments acknowledged'] + total['increments unknown'], details)
        self.assertEqual(self.unexpected[:10], [], details)
        self.assertEqual(missing[:10], [], details)
        # Not asserted: an unconditional write whose coordinator committed it
        # after its answer timed out is coordinated again by the next owner,
        # and the key then holds the same value twice, as siblings
        # (docs/failure-model.md, "Not guaranteed").  Nothing is lost.
        # The run proves something only if every fault happened and writes got through.
        self.assertEqual(sorted(self.faults), ['black holes', 'pauses', 'worker kills'])
        self.assertGreater(total['increments acknowledged'], 0, details)
        self.assertGreater(total['writes acknowledged'], 0, details)


if __name__ == '__main__':
    unittest.main()
