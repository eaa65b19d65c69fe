"""A partition made by the first release (schema version 1) is upgraded in
place when the store opens it, and every key it held reads as it did.

The partitions are the first release's rows (test/fixtures/schema_v1, made
by its own code: generate.py there), loaded into tables as it created them,
on SQLite files and on real MariaDB databases."""
import email.utils
import hashlib
import json
import os
import sqlite3
import time
import urllib.parse
import unittest

import pymysql

from kvstore.engines import schema
from test import support

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'schema_v1')
PARTITIONS = ('p1', 'p2', 'p3', 'p4')
# The first release's placement and chunk size, as generate.py wrote with them.
FIRST_RELEASE = dict(placement='vnodes', vnodes=64, chunk_size=1024)


def row_statements(name):
    """The INSERTs of a partition's rows, one per line."""
    with open(os.path.join(FIXTURES, name), encoding='utf-8') as f:
        return [line.rstrip().rstrip(';') for line in f if line.strip()]


def table_statements():
    with open(os.path.join(FIXTURES, 'tables.sql'), encoding='utf-8') as f:
        text = '\n'.join(line.split('--')[0] for line in f)
    return [s.strip() for s in text.split(';') if s.strip()]


def expected_keys():
    with open(os.path.join(FIXTURES, 'expected.json'), encoding='utf-8') as f:
        return json.load(f)['expected']


class FirstReleasePartitions:
    """Mixed in: make_partitions() loads the first release's rows into
    partitions of the engine's kind, with its tables."""

    def test_every_key_reads_as_it_did_after_the_upgrade(self):
        app = support.web_app(self.store)
        for key, held in expected_keys().items():
            path = '/buckets/old/keys/' + urllib.parse.quote(key)
            if held.get('deleted'):
                self.assertEqual(app.get(path, expect_errors=True).status_int, 404, key)
            elif 'siblings' in held:
                response = app.get(path, headers={'Accept': 'application/json'}, expect_errors=True)
                self.assertEqual(response.status_int, 300, key)
                self.assertEqual(sorted(s['value'] for s in response.json['siblings']), held['siblings'])
            elif 'value' in held:
                self.assertEqual(app.get(path).body.decode(), held['value'], key)
            else:
                body = app.get(path).body
                self.assertEqual((len(body), hashlib.sha256(body).hexdigest()),
                                 (held['size'], held['value_sha256']), key)

    def test_each_partition_records_the_newest_schema_version_and_follows_changes(self):
        for name in PARTITIONS:
            engine = self.store.engines[name]
            self.assertEqual(engine.get_metadata([schema.SCHEMA_VERSION]),
                             {schema.SCHEMA_VERSION: str(schema.LATEST)}, name)
            self.assertTrue(engine.changes(0, 1000), name)   # the old rows got change numbers

    def test_writes_after_the_upgrade_read_back(self):
        app = support.web_app(self.store)
        current = app.get('/buckets/old/keys/key-01')
        app.put('/buckets/old/keys/key-01', b'new', headers={'Content-Type': 'text/plain',
                                                              'If-Match': current.headers['ETag']})
        self.assertEqual(app.get('/buckets/old/keys/key-01').body, b'new')
        app.put('/buckets/old/keys/brand-new', b'fresh', headers={'Content-Type': 'text/plain'})
        self.assertEqual(app.get('/buckets/old/keys/brand-new').body, b'fresh')


    def test_values_and_hints_keep_an_expiry_after_the_upgrade(self):
        app = support.web_app(self.store)
        written = app.put('/buckets/old/keys/brief?ttl=1', b'x', headers={'Content-Type': 'text/plain'})
        owner = self.store.ring.preference_list('old', 'brief', 3)[0]
        version = self.store.engines[owner].read('old', 'brief')[0]
        self.assertTrue(version.expires)
        other = next(p for p in PARTITIONS if p != owner)
        self.store.engines[other].store_hint(owner, 'old', 'brief', version)
        self.assertEqual([v.expires for v in self.store.engines[other].read_hints('old', 'brief')], [version.expires])
        moment = email.utils.mktime_tz(email.utils.parsedate_tz(written.headers['X-Expires-At']))
        time.sleep(max(0.0, moment - time.time()) + 0.1)
        app.get('/buckets/old/keys/brief', status=404)


class TestFirstReleaseSQLite(FirstReleasePartitions, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = support.TemporaryDirectory()
        partitions = support.sqlite_partitions(cls.directory.path)
        for name, fields in partitions.items():
            conn = sqlite3.connect(fields['path'])
            for statement in table_statements() + row_statements(name + '.sql'):
                conn.execute(statement)
            conn.commit()
            conn.close()
        cls.store = support.open_store(partitions, **FIRST_RELEASE)

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.directory.remove()


class TestFirstReleaseMariaDB(FirstReleasePartitions, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from test.mariadb import shared_cluster
        cls.cluster = shared_cluster()
        partitions = support.mariadb_partitions(cls.cluster)
        cls.databases = []
        for name, fields in partitions.items():
            # As root: the store's documented user may not create databases.
            conn = pymysql.connect(host=fields['host'], port=fields['port'], user='root', password='')
            database = 'test_' + fields['database']
            with conn.cursor() as cursor:
                cursor.execute('CREATE DATABASE `%s`' % database)
                cursor.execute('USE `%s`' % database)
                for statement in table_statements() + row_statements(name + '.sql'):
                    cursor.execute(statement)
            conn.commit()
            conn.close()
            cls.databases.append((fields, database))
        cls.store = support.open_store(partitions, **FIRST_RELEASE)

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        for fields, database in cls.databases:
            conn = pymysql.connect(host=fields['host'], port=fields['port'], user='root', password='')
            with conn.cursor() as cursor:
                cursor.execute('DROP DATABASE IF EXISTS `%s`' % database)
            conn.close()

