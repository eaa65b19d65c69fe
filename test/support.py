"""Helpers the test modules share: configurations over real partitions."""
import configparser
import os
import shutil
import tempfile
import uuid

import configuration
from controller import create_application
from datastore import Datastore

STORE_DEFAULTS = dict(replicas=3, r=2, w=2, key_length=1024, max_value_bytes=1024 * 1024,
                      vnodes=64, connect_timeout=1.0, read_timeout=2.0)


def build_config(partitions, **store):
    """A StoreConfig from {partition name: {field: value}} and [store] overrides."""
    parser = configparser.ConfigParser(interpolation=None)
    parser['store'] = {k: str(v) for k, v in dict(STORE_DEFAULTS, **store).items()}
    for name, fields in partitions.items():
        parser['partition-' + name] = {k: str(v) for k, v in fields.items()}
    return configuration.parse(parser, os.path.join(tempfile.gettempdir(), 'test.cfg'))


def sqlite_partitions(directory, count=4, first=1):
    return {'p%d' % i: {'engine': 'sqlite', 'path': os.path.join(directory, 'p%d.sqlite3' % i)}
            for i in range(first, first + count)}


def mariadb_partitions(cluster, database=None, count=None):
    """One partition per server of a MariaDB cluster, in a database of its own
    (WEBPY_ENV=test adds the prefix test_)."""
    database = database or 'kv_' + uuid.uuid4().hex[:10]
    servers = cluster.servers[:count] if count else cluster.servers
    return {'p%d' % (i + 1): {'engine': 'mysql', 'host': s.host, 'port': s.port, 'user': s.user,
                              'password': s.password, 'database': database}
            for i, s in enumerate(servers)}


class TemporaryDirectory:
    def __init__(self):
        self.path = tempfile.mkdtemp(prefix='kvstore-test-')

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def open_store(partitions, **store):
    return Datastore(build_config(partitions, **store))


def web_app(datastore):
    from webtest import TestApp
    return TestApp(create_application(datastore))


def unique(prefix='b'):
    return '%s-%s' % (prefix, uuid.uuid4().hex[:12])
