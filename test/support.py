"""Helpers the test modules share: configurations over real partitions."""
import configparser
import io
import os
import re
import shutil
import socket
import tempfile
import time
import uuid

from kvstore import configuration
from controller import create_application
from datastore import Datastore

STORE_DEFAULTS = dict(replicas=3, r=2, w=2, key_length=1024, max_value_bytes=1024 * 1024,
                      vnodes=64, connect_timeout=1.0, read_timeout=2.0)


def config_parser(partitions, sections=None, **store):
    """The configuration file for {partition name: {field: value}}, [store]
    overrides and other sections ({section: {field: value}})."""
    parser = configparser.ConfigParser(interpolation=None)
    parser['store'] = {k: str(v) for k, v in dict(STORE_DEFAULTS, **store).items()}
    for section, fields in (sections or {}).items():
        parser[section] = {k: str(v) for k, v in fields.items()}
    for name, fields in partitions.items():
        parser['partition-' + name] = {k: str(v) for k, v in fields.items()}
    return parser


def build_config(partitions, sections=None, **store):
    """A StoreConfig from config_parser's file."""
    return configuration.parse(config_parser(partitions, sections, **store),
                               os.path.join(tempfile.gettempdir(), 'test.cfg'))


def config_text(partitions, sections=None, **store):
    """The same configuration as the text of a file, for a StoreServer."""
    text = io.StringIO()
    config_parser(partitions, sections, **store).write(text)
    return text.getvalue()


def sqlite_partitions(directory, count=4, first=1):
    return {'p%d' % i: {'engine': 'sqlite', 'path': os.path.join(directory, 'p%d.sqlite3' % i)}
            for i in range(first, first + count)}


def mariadb_partitions(cluster, database=None, count=None):
    """One partition per server of a MariaDB cluster, in a database of its own
    (WEBPY_ENV=test adds the prefix test_), as the store's user with the
    documented grants."""
    database = database or 'kv_' + uuid.uuid4().hex[:10]
    servers = cluster.servers[:count] if count else cluster.servers
    return {'p%d' % (i + 1): {'engine': 'mysql', 'host': s.host, 'port': s.port, 'user': s.store_user,
                              'password': s.store_password, 'database': database}
            for i, s in enumerate(servers)}


class TemporaryDirectory:
    def __init__(self):
        self.path = tempfile.mkdtemp(prefix='kvstore-test-')

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def open_store(partitions, sections=None, **store):
    return Datastore(build_config(partitions, sections, **store))


def web_app(datastore):
    from webtest import TestApp
    return TestApp(create_application(datastore))


def unique(prefix='b'):
    return '%s-%s' % (prefix, uuid.uuid4().hex[:12])


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def reachable(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
        return True
    except OSError:
        return False


def sent_queries(run):
    """The queries (SQL) the engines send to MariaDB while run() runs (mysqlwire.send)."""
    from kvstore.engines import mysqlwire
    sent, send = [], mysqlwire.send

    def counting(conn, sql):
        sent.append(sql)
        return send(conn, sql)
    mysqlwire.send = counting
    try:
        run()
    finally:
        mysqlwire.send = send
    return sent


def wait_until(condition, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class StoreSpecification:
    """A TestCase mixin: one store per class over make_partitions(), opened with
    store_settings, and a bucket of its own for each test."""
    store_settings = {}
    store_sections = {}

    @classmethod
    def setUpClass(cls):
        cls.partitions = cls.make_partitions()
        cls.store = open_store(cls.partitions, cls.store_sections, **cls.store_settings)
        cls.app = web_app(cls.store)

    @classmethod
    def tearDownClass(cls):
        cls.store.close()

    def setUp(self):
        self.bucket = unique()


class OnSQLite:
    """Mixed into a specification: four SQLite partitions in a temporary directory."""

    @classmethod
    def make_partitions(cls):
        cls.directory = TemporaryDirectory()
        return sqlite_partitions(cls.directory.path)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.directory.remove()


class OnMariaDB:
    """Mixed into a specification: the shared cluster of private mariadbd servers."""

    @classmethod
    def make_partitions(cls):
        from test.mariadb import shared_cluster
        return mariadb_partitions(shared_cluster())


def read_head(sock, data=b''):
    """(status, {lowercase field: value}, bytes after the head) of the next
    response head on a raw socket, after the bytes already read (data); None
    when the connection ends (or is reset) first.  The status line must be
    RFC 9112's: HTTP-version SP status-code SP reason."""
    while b'\r\n\r\n' not in data:
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            more = b''
        if not more:
            return None
        data += more
    head, rest = data.split(b'\r\n\r\n', 1)
    lines = head.decode('latin-1').split('\r\n')
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(':')
        fields[name.strip().lower()] = value.strip()
    status_line = re.fullmatch(r'HTTP/1\.[01] (\d{3}) [^\x00-\x08\x0a-\x1f\x7f]*', lines[0])
    assert status_line, 'not a status line: %r' % lines[0]
    return int(status_line.group(1)), fields, rest


def read_body(sock, fields, rest):
    """The rest of a response body of Content-Length bytes (rest: what was read already)."""
    length = int(fields.get('content-length', 0))
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            break
        rest += more
    return rest
