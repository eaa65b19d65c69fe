"""Gossip between front ends about partition health.

Every `interval` seconds a front end sends its view (health.Health.view()) to
one peer chosen at random from `[cluster] peers` and merges the view the peer
answers with (push-pull); for each partition the newest observation wins.  So
one front end's discovery that a partition is down reaches every other within
a few rounds.  With no peers configured nothing is sent.
"""
import http.client
import json
import logging
import random
import threading

log = logging.getLogger('kvstore.gossip')
PATH = '/cluster/gossip'


class Gossip:
    def __init__(self, health, peers, interval, on_recovered=None):
        self.health = health
        self.peers = list(peers)
        self.interval = interval
        self.on_recovered = on_recovered or (lambda name: None)
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self.peers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name='gossip', daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()

    def receive(self, view):
        """Merge a peer's view; answer with ours."""
        for name in self.health.merge(view):
            self.on_recovered(name)
        return self.health.view()

    def _run(self):
        while not self._stop.wait(self.interval * random.uniform(0.8, 1.2)):
            host, port = random.choice(self.peers)
            try:
                self.receive(self.exchange(host, port))
                self.rounds += 1
            except (OSError, ValueError, http.client.HTTPException) as e:
                log.debug('gossip with %s:%d failed: %s', host, port, e)

    def exchange(self, host, port):
        conn = http.client.HTTPConnection(host, port, timeout=max(1.0, self.interval))
        try:
            conn.request('POST', PATH, json.dumps({'partitions': self.health.view()}),
                         {'Content-Type': 'application/json', 'Accept': 'application/json'})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise ValueError('peer answered %d' % response.status)
            return json.loads(body)['partitions']
        finally:
            conn.close()
