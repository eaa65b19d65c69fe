"""The MariaDB grants the documentation gives are the ones the store needs.

The suite's partitions connect as the user docs/OPERATIONS.md creates, with
its GRANT as written there (test/mariadb_grants.py); here: that the documents
agree, that the harness's user has exactly those privileges, and that a
partition whose grants refuse writes shows as failing, not up.
"""
import logging
import os
import re
import time
import unittest

from test import support
from test.mariadb import shared_cluster
from test.mariadb_grants import (DOCUMENT, documented_privileges, documented_statements, drop_user, run_as_root,
                                 without_privilege)
from test.test_failures import keys_on

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(connect_timeout=0.5, read_timeout=1.0, backoff=0.1, max_backoff=0.2)


class TestDocumentedGrants(unittest.TestCase):
    def test_configuration_md_gives_the_same_grant_as_operations_md(self):
        self.assertEqual(documented_statements(os.path.join(HERE, 'docs', 'CONFIGURATION.md')),
                         documented_statements(DOCUMENT))

    def test_the_suites_store_user_has_exactly_the_documented_privileges(self):
        server = shared_cluster()[0]
        conn = server.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW GRANTS FOR %s@'127.0.0.1'", (server.store_user,))
                grants = [row[0] for row in cursor.fetchall()]
        finally:
            conn.close()
        on_databases = [g for g in grants if ' ON `test\\_%`.* ' in g]
        self.assertEqual(len(on_databases), 1, grants)
        granted = {p.strip() for p in re.match(r'GRANT (.+?) ON ', on_databases[0]).group(1).split(',')}
        self.assertEqual(granted, documented_privileges())
        others = [g for g in grants if g not in on_databases]
        self.assertTrue(all(g.startswith('GRANT USAGE ON *.*') for g in others), grants)


class TestPartitionRefusedByItsGrants(unittest.TestCase):
    """p1 connects as a user without UPDATE: every replica write it owns is
    refused (MySQL error 1142) though its reads answer."""

    victim = 'p1'

    def setUp(self):
        self.cluster = shared_cluster()
        self.partitions = support.mariadb_partitions(self.cluster)
        self.database = 'test_' + self.partitions[self.victim]['database']
        self.user = 'refused_%d' % os.getpid()
        self.partitions[self.victim].update(without_privilege(self.cluster[0], self.user, 'UPDATE'))
        self.store = support.open_store(self.partitions, **FAST)
        self.app = support.web_app(self.store)
        self.bucket = support.unique()

    def tearDown(self):
        self.store.close()
        drop_user(self.cluster[0], self.user)

    def state(self):
        return {p['name']: p for p in self.app.get('/cluster').json['partitions']}[self.victim]

    def test_it_shows_down_in_cluster_and_metrics_with_a_log_line_until_a_write_succeeds(self):
        keys = keys_on(self.store, self.bucket, self.victim, 6)
        with self.assertLogs('kvstore.health', logging.WARNING) as logged:
            for key in keys:
                self.app.put('/buckets/%s/keys/%s' % (self.bucket, key), b'v',
                             headers={'Content-Type': 'text/plain'})
        self.assertTrue(any('partition p1 is down: refused by its grants (MySQL error 1142: UPDATE denied)'
                            in line for line in logged.output), logged.output)
        # Its reads answer: probes made by reads alone do not bring it back up.
        for _ in range(3):
            time.sleep(FAST['max_backoff'] * 1.5)
            for key in keys:
                self.assertEqual(self.app.get('/buckets/%s/keys/%s?r=3' % (self.bucket, key)).body, b'v')
        state = self.state()
        self.assertIn(state['state'], ('down', 'suspect'), state)   # suspect: this very request probes it
        self.assertIn('refused by its grants', state['last_error'])
        self.assertNotIn(self.user, state['last_error'])
        self.assertIn('kvstore_partition_up{partition="p1"} 0.0', self.app.get('/metrics').text)
        # The operator fixes the grants: the next write that probes it succeeds.
        # (On the tables that are updated: a database's grant reaches open
        # connections only at their next USE.)
        run_as_root(self.cluster[0], ['GRANT UPDATE ON `%s`.%s TO \'%s\'@\'127.0.0.1\'' % (self.database, table, self.user)
                                      for table in ('objects', 'change_log', 'metadata')])
        time.sleep(FAST['max_backoff'] * 1.5)
        for key in keys:
            self.app.put('/buckets/%s/keys/%s' % (self.bucket, key), b'w', headers={'Content-Type': 'text/plain'})
        self.assertEqual(self.state()['state'], 'up')
        self.assertIn('kvstore_partition_up{partition="p1"} 1.0', self.app.get('/metrics').text)
