"""Failure detection: what this process believes about each partition.

A failed connect or query marks a partition down for a backoff period (doubling
with each failure, capped); requests skip it meanwhile instead of waiting for
timeouts.  When the backoff has passed the partition is suspect: one request
probes it, and its outcome decides.  Views are shared between front ends by
gossip (gossip.py): for each partition the newest observation wins, and
keeps the name of the front-end process that made it (observer).
"""
import logging
import os
import socket
import threading
import time

log = logging.getLogger('kvstore.health')

UP, DOWN, SUSPECT = 'up', 'down', 'suspect'
STATES = (UP, DOWN, SUSPECT)
MAX_ERROR_CHARS = 512    # of a last_error kept and gossiped
MAX_OBSERVER_CHARS = 128


def front_end_name():
    """This process, as observations name it: host, port (BIND) and pid."""
    port = os.environ.get('BIND', '').rpartition(':')[2]
    return ('%s:%s/%d' % (socket.gethostname(), port, os.getpid()) if port
            else '%s/%d' % (socket.gethostname(), os.getpid()))[:MAX_OBSERVER_CHARS]


def call_kind(method):
    """An engine method, the send_ half of a query as its finish_ half (where
    its failure shows): finish_apply for send_apply.  (apply and finish_apply
    are not the same statements: one may be refused, the other not.)"""
    return 'finish_' + method[5:] if method and method.startswith('send_') else method


class PartitionHealth:
    def __init__(self, name):
        self.name = name
        self.state = UP
        self.since = time.time()      # when the state last changed
        self.observed = 0.0           # when the state was last confirmed
        self.last_error = None
        self.observer = None          # the front-end process that made the observation
        self.failures = 0             # consecutive
        self.retry_at = 0.0
        self.probing = False
        self.refused = None           # the call its grants refused: only that call succeeding brings it back

    def view(self):
        return {'state': self.state, 'since': self.since, 'observed': self.observed,
                'last_error': self.last_error, 'observer': self.observer}


class Health:
    def __init__(self, names, backoff=1.0, max_backoff=30.0, publish=None):
        """publish(view): told this process's view whenever a partition's state
        changes (workers.py shares it with the front end's other workers)."""
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.publish = publish or (lambda view: None)
        self.name = front_end_name()
        self._lock = threading.Lock()
        self._partitions = {name: PartitionHealth(name) for name in names}

    def available(self, name, call=None):
        """May a request use this partition now for call (an engine method)?
        Claims the probe of a suspect one.  A partition whose grants refused
        a call still takes the others: only that call waits for the probe."""
        p = self._partitions[name]
        if p.state == UP:   # the common case, read without the lock
            return True
        if p.refused:
            return self._may_retry_refused(p, call)
        with self._lock:
            if p.state == UP:
                return True
            if p.probing or time.time() < p.retry_at:
                return False
            p.state, p.probing = SUSPECT, True
            return True

    def _may_retry_refused(self, p, call):
        """Other calls go on; the refused one is tried again once a backoff
        (without a probe to wait for: a sent query's answer may go unread)."""
        if call_kind(call) != p.refused or call.startswith('finish_'):
            return True   # finish_: its query was sent, its answer is read
        with self._lock:
            now = time.time()
            if now < p.retry_at:
                return False
            p.retry_at = now + min(self.max_backoff, self.backoff * 2 ** (p.failures - 1))
            return True

    def succeeded(self, name, call=None):
        """Record a success of call; True when the partition just came back up."""
        p = self._partitions[name]
        if p.state == UP and not p.failures and not p.probing:
            p.observed, p.observer = time.time(), self.name   # nothing else changes: no lock
            return False
        with self._lock:
            now = time.time()
            if p.refused and call != p.refused:
                return False   # its grants still refuse the call they refused, as far as we know
            p.refused = None
            p.observed, p.observer, p.failures, p.probing = now, self.name, 0, False
            if p.state == UP:
                return False
            p.state, p.since, p.retry_at = UP, now, 0.0
        self.publish(self.view())
        return True

    def failed(self, name, reason, refused=None):
        """Record a failure; refused: the call its grants refused."""
        with self._lock:
            p = self._partitions[name]
            now = time.time()
            p.failures += 1
            p.retry_at = now + min(self.max_backoff, self.backoff * 2 ** (p.failures - 1))
            if p.state == UP:
                p.since = now
                log.warning('partition %s is down: %s', name, reason)
            p.state, p.observed, p.last_error, p.probing = DOWN, now, str(reason)[:MAX_ERROR_CHARS], False
            p.observer, p.refused = self.name, call_kind(refused)
        self.publish(self.view())

    def is_down(self, name):
        with self._lock:
            return self._partitions[name].state != UP

    def view(self):
        with self._lock:
            return {name: p.view() for name, p in self._partitions.items()}

    def merge(self, remote):
        """Adopt a peer's newer observations; returns the partitions that came back up."""
        recovered, changed = [], False
        with self._lock:
            now = time.time()
            for name, seen in remote.items():
                p = self._partitions.get(name)
                if p is None or not isinstance(seen, dict):
                    continue
                try:
                    observed = float(seen['observed'])
                    state = seen['state']
                except (KeyError, TypeError, ValueError):
                    continue
                if observed <= p.observed or state not in STATES:
                    continue
                if state == UP and p.refused:
                    continue   # a peer's other calls answered; this process's own probe decides
                if state == UP and p.state != UP:
                    recovered.append(name)
                if state == UP:
                    p.state, p.retry_at, p.failures = UP, 0.0, 0
                else:
                    # Probe it ourselves after a backoff, as if we had seen it fail.
                    p.state, p.retry_at = DOWN, now + self.backoff
                p.since = float(seen.get('since') or now)
                p.observed, p.last_error, p.probing = observed, seen.get('last_error'), False
                p.observer = seen.get('observer')
                changed = True
        if changed:
            self.publish(self.view())
        return recovered
