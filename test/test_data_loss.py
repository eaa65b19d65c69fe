"""A partition that lost data (issue 17): emptied, recreated, restored from a
backup or rolled back, it must not hand out version counters (dots) the other
replicas have seen already, or they drop its new writes as old ones.

The first test speaks to the real server (serve.py) over HTTP with the
embedded default, SQLite files under data/, and runs sync.py as a command; the
others use the shared MariaDB cluster, where a partition's database is dropped
or restored from a dump taken earlier.
"""
import json
import os
import subprocess
import sys
import unittest
import urllib.parse

import configuration
from ring import Ring
from test.server import StoreServer
from test.test_server import CONFIGURATION, request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def values_of(response, body):
    """The live values a GET answered with: one (200), several (300), none (404)."""
    if response.status == 200:
        return [body]
    if response.status == 300:
        return sorted(s['value'].encode() for s in json.loads(body)['siblings'])
    assert response.status == 404, (response.status, body)
    return []


class TestEmptiedPartitionOverHTTP(unittest.TestCase):
    """Three writes with w=all to a key whose primary is p1; the server stops,
    data/p1.sqlite3 goes, the server starts again: the next write, acknowledged
    by every owner, must be read back, before and after sync.py."""

    def setUp(self):
        self.server = StoreServer(CONFIGURATION, workers=1, threads=4)
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.addCleanup(self.server.stop)
        ring = Ring.of(configuration.load(self.server.config_path))
        self.key = next(k for k in ('key-%d' % i for i in range(1000))
                        if ring.preference_list('lost', k, 3)[0] == 'p1')
        self.url = '/buckets/lost/keys/%s?w=all' % urllib.parse.quote(self.key)

    def put(self, value):
        conn = self.server.connect()
        try:
            response, body = request(conn, 'PUT', self.url, value, {'Content-Type': 'text/plain'})
        finally:
            conn.close()
        self.assertIn(response.status, (200, 201), body)
        return json.loads(body)

    def get(self):
        conn = self.server.connect()
        try:
            return values_of(*request(conn, 'GET', '/buckets/lost/keys/%s?r=all' % urllib.parse.quote(self.key)))
        finally:
            conn.close()

    def test_a_write_after_the_primary_lost_its_file_is_not_dropped(self):
        for value in (b'v1', b'v2', b'v3'):
            self.put(value)
        self.assertEqual(self.get(), [b'v3'])
        self.server.stop()
        for suffix in ('', '-wal', '-shm'):
            path = os.path.join(self.server.directory, 'data', 'p1.sqlite3' + suffix)
            if os.path.exists(path):
                os.remove(path)
        self.server.start()

        receipt = self.put(b'NEW')
        self.assertEqual(receipt['coordinator'], 'p1')
        self.assertEqual(sorted(receipt['acknowledged']), sorted(receipt['preference_list']), receipt)
        # p1 knew nothing of v3 when it took the write, so v3 may stay beside
        # it as a sibling; NEW must not be lost.
        self.assertIn(b'NEW', self.get())
        sync = subprocess.run([sys.executable, os.path.join(HERE, 'sync.py'), '--config',
                               self.server.config_path, '--no-progress'],
                              cwd=self.server.directory, capture_output=True, text=True, timeout=120)
        self.assertEqual(sync.returncode, 0, sync.stdout + sync.stderr)
        self.assertIn(b'NEW', self.get())
