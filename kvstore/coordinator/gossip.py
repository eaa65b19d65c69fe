"""Gossip between front ends about partition health.

Every `interval` seconds a front end sends its view (health.Health.view()) to
one peer chosen at random from `[cluster] peers` and merges the view the peer
answers with (push-pull); for each partition the newest observation wins.  So
one front end's discovery that a partition is down reaches every other within
a few rounds.  With no peers configured nothing is sent.

Front ends trust only each other: every message, and every answer, carries
an HMAC-SHA256 under `[cluster] secret` of what it is, the Host it was sent
to, when it was sent, a nonce and its body (X-Gossip-Timestamp, X-Gossip-Nonce,
X-Gossip-Signature); an answer is signed over the nonce of the request it
answers.  One that is unsigned, wrongly signed or older or newer than WINDOW
seconds is refused and changes nothing; so is a view that is not well formed
(check_view), before anything of it is merged.  A message is taken once: its
nonce is kept (SeenNonces) until its window has passed, in a file every
worker process of the machine shares, so a captured message replayed to any
of them within its window is refused.  (A front end on another machine may
take a replay once: a genuine, recent observation, merged only when newer
than the one it holds.)
"""
import hashlib
import hmac
import http.client
import json
import logging
import math
import os
import random
import secrets
import sqlite3
import stat
import tempfile
import threading
import time

from kvstore.errors import BadRequest, Forbidden, Unavailable
from kvstore.coordinator.health import MAX_ERROR_CHARS, MAX_OBSERVER_CHARS, STATES

log = logging.getLogger('kvstore.gossip')
PATH = '/cluster/gossip'
TIMESTAMP, NONCE, SIGNATURE = 'X-Gossip-Timestamp', 'X-Gossip-Nonce', 'X-Gossip-Signature'
NONCE_CHARS = 32       # 128 random bits in hex
WINDOW = 30.0          # seconds a signed message is accepted before or after its timestamp
SKEW = 5.0             # seconds an observation may lie in the future (clocks differ)
# A view's size: an observation with the longest last_error and observer, every character escaped.
BYTES_PER_PARTITION = 6 * (MAX_ERROR_CHARS + MAX_OBSERVER_CHARS) + 512
REQUEST, ANSWER = b'POST ' + PATH.encode(), b'200 ' + PATH.encode()


def signature(secret, purpose, host, timestamp, nonce, body):
    """The HMAC-SHA256, in hex, of what a message is (a request or an answer),
    the Host it was sent to, its timestamp, nonce (an answer: its request's)
    and body."""
    message = b'\n'.join(field.encode('latin-1', 'replace') for field in (host or '', timestamp, nonce)) + b'\n'
    message = b'%s\n%s%s' % (purpose, message, body)
    return hmac.new(secret.encode('utf-8'), message, hashlib.sha256).hexdigest()


def signed_headers(secret, purpose, host, body, nonce=None):
    """The headers that sign a message to host (a request: with a new nonce;
    an answer: over its request's nonce)."""
    timestamp, nonce = '%.3f' % time.time(), nonce or secrets.token_hex(NONCE_CHARS // 2)
    return {TIMESTAMP: timestamp, NONCE: nonce, SIGNATURE: signature(secret, purpose, host, timestamp, nonce, body)}


def verify(secret, purpose, host, timestamp, nonce, given, body):
    """Raise Forbidden unless the message is signed with the secret, for this
    host, within WINDOW; its timestamp (seconds since the epoch) when it is."""
    if secret is None:
        raise Forbidden('gossip_refused', 'gossip is off: this front end has no [cluster] secret')
    if not timestamp or not given or not nonce:
        raise Forbidden('gossip_refused', 'gossip must be signed (%s, %s and %s)' % (TIMESTAMP, NONCE, SIGNATURE))
    if not hmac.compare_digest(signature(secret, purpose, host, timestamp, nonce, body).encode(),
                               given.encode('latin-1', 'replace')):
        raise Forbidden('gossip_refused', 'the gossip signature is wrong')
    try:
        sent = float(timestamp)
    except ValueError:
        sent = math.nan
    if not abs(time.time() - sent) <= WINDOW:   # NaN too
        raise Forbidden('gossip_refused', 'the gossip timestamp is more than %d s away from this '
                        'front end\'s clock' % WINDOW)
    return sent


class SeenNonces:
    """The nonces of the gossip messages taken within the last windows, kept
    in an SQLite file that every worker process of this machine opens (the
    same one for one cluster secret), so that each message is taken once,
    whichever worker it reaches, and a replay is refused by all of them."""

    def __init__(self, secret, directory=None):
        directory = directory or private_directory('kvstore-gossip-%d' % os.geteuid())
        name = hashlib.sha256(b'gossip nonces\0' + secret.encode('utf-8')).hexdigest()[:16]
        self.path = os.path.join(directory, name + '.sqlite3')
        self.local = threading.local()

    def _db(self):
        db = getattr(self.local, 'db', None)
        if db is None:
            db = self.local.db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute('PRAGMA journal_mode=WAL')
            db.execute('CREATE TABLE IF NOT EXISTS seen (nonce TEXT PRIMARY KEY, expires REAL NOT NULL)')
        return db

    def first_time(self, nonce, sent):
        """Record nonce, for a message sent at `sent`: False if it was already.
        Unavailable when the file cannot say: a message is never taken unchecked."""
        try:
            db = self._db()
            db.execute('DELETE FROM seen WHERE expires < ?', (time.time(),))
            db.execute('INSERT INTO seen VALUES (?, ?)', (nonce, sent + WINDOW))
            return True
        except sqlite3.IntegrityError:
            return False
        except sqlite3.Error as e:
            log.error('gossip nonces in %s: %s', self.path, e)
            raise Unavailable('this front end cannot check gossip for replays now')


def private_directory(name):
    """A directory under the temporary directory that only this user can
    enter; one made afresh (not shared) if the name is taken by another."""
    path = os.path.join(tempfile.gettempdir(), name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.error('%s is not a directory of this user alone: gossip replays are refused by this '
                      'process only', path)
            return tempfile.mkdtemp(prefix=name + '-')
    return path


def check_view(view, partitions, now):
    """Raise BadRequest unless view is {configured partition: a sound observation}."""
    def refuse(problem):
        raise BadRequest('bad_gossip', problem)

    if not isinstance(view, dict):
        refuse('gossip is a JSON object {"partitions": {name: observation}}')
    for name, seen in view.items():
        if name not in partitions:
            refuse('%r is not a configured partition' % name[:64])
        if not isinstance(seen, dict):
            refuse('an observation is an object: state, since, observed, last_error')
        if seen.get('state') not in STATES:
            refuse('state is one of %s' % ', '.join(STATES))
        for field in ('since', 'observed'):
            value = seen.get(field)
            if type(value) not in (int, float) or not 0 <= value <= now + SKEW:  # NaN fails too
                refuse('%s is a time in seconds, not later than now' % field)
        error = seen.get('last_error')
        if error is not None and not (isinstance(error, str) and len(error) <= MAX_ERROR_CHARS):
            refuse('last_error is null or text of at most %d characters' % MAX_ERROR_CHARS)
        observer = seen.get('observer')
        if observer is not None and not (isinstance(observer, str) and len(observer) <= MAX_OBSERVER_CHARS):
            refuse('observer is null or text of at most %d characters' % MAX_OBSERVER_CHARS)


class Gossip:
    def __init__(self, health, peers, interval, secret=None, on_recovered=None):
        self.health = health
        self.peers = list(peers)
        self.secret = secret
        self.partitions = frozenset(health.view())
        self.max_bytes = BYTES_PER_PARTITION * (len(self.partitions) + 1)
        self.interval = interval
        self.on_recovered = on_recovered or (lambda name: None)
        self.rounds = 0
        self.seen = SeenNonces(secret) if secret else None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self.peers and self._thread is None:
            self._thread = threading.Thread(target=self._run, name='gossip', daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()

    def admit(self, host, timestamp, nonce, given, body):
        """Raise Forbidden unless the message to host is signed (verify) and
        taken for the first time."""
        sent = verify(self.secret, REQUEST, host, timestamp, nonce, given, body)
        if not self.seen.first_time(nonce, sent):
            raise Forbidden('gossip_refused', 'this gossip message was taken before (a replay)')

    def receive(self, view):
        """Merge a peer's view, once checked whole; answer with ours."""
        check_view(view, self.partitions, time.time())
        for name in self.health.merge(view):
            self.on_recovered(name)
        return self.health.view()

    def _run(self):
        while not self._stop.wait(self.interval * random.uniform(0.8, 1.2)):
            host, port = random.choice(self.peers)
            try:
                self.receive(self.exchange(host, port))
                self.rounds += 1
            except (OSError, ValueError, http.client.HTTPException, BadRequest, Forbidden) as e:
                log.debug('gossip with %s:%d failed: %s', host, port, e)

    def exchange(self, host, port):
        conn = http.client.HTTPConnection(host, port, timeout=max(1.0, self.interval))
        try:
            body = json.dumps({'partitions': self.health.view()}).encode()
            to = '%s:%d' % ('[%s]' % host if ':' in host else host, port)
            signed = signed_headers(self.secret, REQUEST, to, body)
            conn.request('POST', PATH, body, dict(signed, **{
                'Host': to, 'Content-Type': 'application/json', 'Accept': 'application/json'}))
            response = conn.getresponse()
            body = response.read(self.max_bytes + 1)
            if response.status != 200:
                raise ValueError('peer answered %d' % response.status)
            if len(body) > self.max_bytes:
                raise ValueError('the peer\'s view is larger than %d bytes' % self.max_bytes)
            verify(self.secret, ANSWER, to, response.getheader(TIMESTAMP), signed[NONCE],
                   response.getheader(SIGNATURE), body)
            return json.loads(body)['partitions']
        finally:
            conn.close()
