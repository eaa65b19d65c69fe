"""Reading and checking configuration.cfg.

A bad configuration stops startup with one line naming the section and field.
Under WEBPY_ENV=test every MySQL database name gets the prefix `test_`, so a
test run can never touch real data.
"""
import configparser
import dataclasses
import os
import re

# The project's top directory: configuration.cfg and data/ live there.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(HERE, 'configuration.cfg')
ENGINES = ('sqlite', 'mysql')
ROLES = ('read', 'write', 'admin')       # each implies the ones before it
SHA256_HEX = re.compile(r'[0-9a-f]{64}\Z')
MIN_SECRET_CHARS = 32


class ConfigError(Exception):
    """One clear line: which file, section and field, and what is wrong."""


@dataclasses.dataclass
class PartitionConfig:
    name: str
    engine: str
    weight: float = 1.0
    path: str = None          # sqlite
    host: str = None          # mysql
    port: int = 3306
    user: str = None
    password: str = ''
    database: str = None


@dataclasses.dataclass
class TokenConfig:
    """A client's credential ([token-NAME]): the SHA-256 of the token, and its
    grants, (role, bucket pattern) pairs."""
    name: str
    sha256: str
    grants: tuple


@dataclasses.dataclass
class StoreConfig:
    replicas: int
    r: int
    w: int
    key_length: int
    max_value_bytes: int
    chunk_size: int
    vnodes: int
    connect_timeout: float
    read_timeout: float
    backoff: float
    max_backoff: float
    hint_window: float
    max_siblings: int
    partitions: list
    source: str
    peers: list = dataclasses.field(default_factory=list)
    # Primary quorums: owners (never fallbacks) that must answer a read / hold a write.
    pr: int = 0
    pw: int = 0
    gossip_interval: float = 1.0
    max_clock_skew: float = 60.0        # seconds a context's counter may be ahead of the clock (versions.py)
    body_timeout: float = 5.0           # seconds a request body may pause (framing.BodyPace)
    min_body_rate: int = 1024           # bytes a second a body averages after body_timeout; 0: no floor
    # [sync]: the reconciler (sync.py)
    sync_batch_size: int = 500          # rows per query or transaction
    sync_rate_limit: float = 0.0        # rows per second read and written; 0: no limit
    tombstone_grace: float = 7 * 86400  # seconds a tombstone is kept after it is everywhere
    chunk_grace: float = 86400          # seconds before chunks no version points to are removed
    sync_full_pass_interval: float = 86400   # seconds between full passes of anti-entropy
    # [feed]: the change feed (coordinator/feed.py, http/feed.py); retention per partition, trimmed by gc
    feed_retention: float = 7 * 86400   # seconds a change is kept
    feed_max_rows: int = 10 ** 7        # changes a partition keeps at most
    feed_poll_interval: float = 0.25    # seconds between a waiting reader's looks at the logs
    feed_max_wait: float = 60.0         # seconds a long poll (?wait=) holds at most
    feed_stream_seconds: float = 300.0  # seconds a stream lasts before the client reconnects (Last-Event-ID)
    # Access (access.py): [token-NAME] sections (none: no credentials asked),
    # [access] allowed_hosts, and [cluster] secret, the key gossip is signed with.
    tokens: list = dataclasses.field(default_factory=list)
    allowed_hosts: list = dataclasses.field(default_factory=list)
    cluster_secret: str = None
    # Where keys live (ring.py): 'balanced' (equal slots, shares within a few
    # per cent) or 'vnodes' (the consistent-hash ring of earlier versions).
    placement: str = 'balanced'


def config_path():
    return os.environ.get('STORE_CONFIG') or DEFAULT_PATH


def is_test_environment():
    return os.environ.get('WEBPY_ENV') == 'test'


def load(path=None):
    path = path or config_path()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding='utf-8') as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError('%s: cannot be read (%s)' % (path, e.strerror))
    except configparser.Error as e:
        raise ConfigError('%s: not a valid configuration file (%s)' % (
            path, str(e).splitlines()[0]))
    return parse(parser, path)


def parse(parser, source='configuration'):
    where = os.path.basename(source)

    def fail(section, field, problem):
        raise ConfigError('%s [%s] %s: %s' % (where, section, field, problem))

    def number(section, field, kind, default, minimum=None, maximum=None):
        raw = parser.get(section, field, fallback=None)
        if raw is None:
            if default is None:
                fail(section, field, 'is required')
            return default
        try:
            value = kind(raw)
        except ValueError:
            fail(section, field, '%r is not a %s' % (raw, 'whole number' if kind is int else 'number'))
        if minimum is not None and value < minimum:
            fail(section, field, 'must be at least %s' % minimum)
        if maximum is not None and value > maximum:
            fail(section, field, 'must be at most %s' % maximum)
        return value

    def placement():
        value = parser.get('store', 'placement', fallback='balanced').strip()
        if value not in ('balanced', 'vnodes'):
            fail('store', 'placement', '%r is not balanced or vnodes' % value)
        return value

    def peers():
        found = []
        for item in parser.get('cluster', 'peers', fallback='').split(','):
            item = item.strip()
            if not item:
                continue
            host, _, port = item.rpartition(':')
            if not host or not port.isdigit():
                fail('cluster', 'peers', '%r is not host:port' % item)
            found.append((host, int(port)))
        return found

    def tokens():
        found = []
        for section in parser.sections():
            if not section.startswith('token-'):
                continue
            digest = parser.get(section, 'sha256', fallback='').strip().lower()
            if not SHA256_HEX.match(digest):
                fail(section, 'sha256', 'is the 64 hex digits `python3 -m kvstore.http.access token` printed')
            grants = []
            for item in parser.get(section, 'roles', fallback='').split(','):
                role, _, pattern = item.strip().partition(':')
                if role not in ROLES or not pattern.strip():
                    fail(section, 'roles', '%r is not ROLE:BUCKET-PATTERN with a role of %s'
                         % (item.strip(), ', '.join(ROLES)))
                grants.append((role, pattern.strip()))
            found.append(TokenConfig(section[len('token-'):], digest, tuple(grants)))
        return found

    def cluster_secret(peers):
        secret = parser.get('cluster', 'secret', fallback='').strip() or None
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            fail('cluster', 'secret', 'must be at least %d characters (python3 -m kvstore.http.access secret makes one)'
                 % MIN_SECRET_CHARS)
        if peers and secret is None:
            fail('cluster', 'secret', 'is required when peers are configured: gossip is signed with it '
                 '(python3 -m kvstore.http.access secret makes one; every front end needs the same)')
        return secret

    if not parser.has_section('store'):
        fail('store', 'section', 'is missing')
    partitions = []
    base = os.path.dirname(os.path.abspath(source))
    for section in parser.sections():
        if not section.startswith('partition-'):
            continue
        name = section[len('partition-'):]
        if not name or not name.replace('-', '').replace('_', '').isalnum():
            fail(section, 'name', 'partition names use letters, digits, - and _')
        engine = parser.get(section, 'engine', fallback=None)
        if engine not in ENGINES:
            fail(section, 'engine', '%r is unknown (use %s)' % (engine, ' or '.join(ENGINES)))
        # weight 0: the partition leaves the ring; it stays reachable so that
        # sync.py can move its keys away (then remove the section).
        p = PartitionConfig(name=name, engine=engine,
                            weight=number(section, 'weight', float, 1.0, 0.0))
        if 0 < p.weight < 0.01:
            fail(section, 'weight', 'must be 0 (leaving the ring) or at least 0.01')
        if engine == 'sqlite':
            path = parser.get(section, 'path', fallback=None) or fail(section, 'path', 'is required')
            p.path = os.path.join(base, path)
            directory = os.path.dirname(p.path)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                fail(section, 'path', 'directory %s cannot be created (%s)' % (directory, e.strerror))
            if not os.access(directory, os.W_OK):
                fail(section, 'path', 'directory %s is not writable' % directory)
        else:
            p.host = parser.get(section, 'host', fallback='127.0.0.1')
            p.port = number(section, 'port', int, 3306, 1)
            p.user = parser.get(section, 'user', fallback=None) or fail(section, 'user', 'is required')
            p.password = parser.get(section, 'password', fallback='')
            database = parser.get(section, 'database', fallback=None) or fail(section, 'database', 'is required')
            p.database = ('test_' + database) if is_test_environment() else database
        partitions.append(p)
    if not partitions:
        fail('partition-NAME', 'section', 'no partitions are configured')
    if not any(p.weight > 0 for p in partitions):
        fail('partition-NAME', 'weight', 'every partition has weight 0: none is left on the ring')

    replicas = number('store', 'replicas', int, 3, 1)
    on_ring = sum(1 for p in partitions if p.weight > 0)
    if replicas > on_ring:
        fail('store', 'replicas', '%d replicas need at least %d partitions, %d are configured'
             % (replicas, replicas, on_ring) + (' with a weight above 0' if on_ring < len(partitions) else ''))
    quorum = replicas // 2 + 1
    r = number('store', 'r', int, quorum)
    w = number('store', 'w', int, quorum)
    pr = number('store', 'pr', int, 0)
    pw = number('store', 'pw', int, 0)
    for field, value, least in (('r', r, 1), ('w', w, 1), ('pr', pr, 0), ('pw', pw, 0)):
        if not least <= value <= replicas:
            fail('store', field, 'must be between %d and replicas (%d)' % (least, replicas))
    return StoreConfig(
        replicas=replicas, r=r, w=w, pr=pr, pw=pw,
        key_length=number('store', 'key_length', int, 1024, 1, 1024),  # the schema's limit
        max_value_bytes=number('store', 'max_value_bytes', int, 1024 ** 3, 0),
        # Under MariaDB's max_allowed_packet (16 MiB by default) with room to spare.
        chunk_size=number('store', 'chunk_size', int, 1024 ** 2, 1, 8 * 1024 ** 2),
        vnodes=number('store', 'vnodes', int, 64, 1),
        placement=placement(),
        connect_timeout=number('store', 'connect_timeout', float, 0.5, 0.01),
        read_timeout=number('store', 'read_timeout', float, 1.0, 0.01),
        backoff=number('store', 'backoff', float, 1.0, 0.01),
        max_backoff=number('store', 'max_backoff', float, 30.0, 0.01),
        hint_window=number('store', 'hint_window', float, 86400.0, 1),
        max_clock_skew=number('store', 'max_clock_skew', float, 60.0, 1),
        max_siblings=number('store', 'max_siblings', int, 16, 1),
        partitions=partitions, source=source,
        body_timeout=number('store', 'body_timeout', float, 5.0, 0.1, 3600),
        min_body_rate=number('store', 'min_body_rate', int, 1024, 0),
        peers=peers(), cluster_secret=cluster_secret(peers()), tokens=tokens(),
        allowed_hosts=[h.strip().lower() for h in parser.get('access', 'allowed_hosts', fallback='').split(',')
                       if h.strip()],
        gossip_interval=number('cluster', 'gossip_interval', float, 1.0, 0.05),
        sync_batch_size=number('sync', 'batch_size', int, 500, 1, 100000),
        sync_rate_limit=number('sync', 'rate_limit', float, 0.0, 0.0),
        tombstone_grace=number('sync', 'tombstone_grace', float, 7 * 86400.0, 0.0),
        chunk_grace=number('sync', 'chunk_grace', float, 86400.0, 1.0),
        sync_full_pass_interval=number('sync', 'full_pass_interval', float, 86400.0, 0.0),
        feed_retention=number('feed', 'retention', float, 7 * 86400.0, 0.0),
        feed_max_rows=number('feed', 'max_rows', int, 10 ** 7, 0),
        feed_poll_interval=number('feed', 'poll_interval', float, 0.25, 0.01, 60.0),
        feed_max_wait=number('feed', 'max_wait', float, 60.0, 0.0, 3600.0),
        feed_stream_seconds=number('feed', 'stream_seconds', float, 300.0, 1.0, 86400.0))
