"""A partition's storage (engines.py) taking in versions written elsewhere,
on SQLite and on real MariaDB servers.

A replica is sent a version with the ids of the versions the coordinator
replaced by it.  Whatever the replica held, it ends up holding exactly the
versions no other one supersedes: whether it takes the version in one call
(apply) or in the two halves a write uses to reach every replica at once
(send_apply, then finish_apply: on MariaDB one compound statement; on SQLite
send_apply is apply).
"""
import unittest

from test import support
from test.test_versions import write


class ApplySpecification(support.StoreSpecification):
    halves = False

    def setUp(self):
        super().setUp()
        self.engine = self.store.engines['p1']

    def apply(self, key, version, superseded=None):
        if self.halves and superseded is not None:
            return self.engine.finish_apply(self.engine.send_apply(self.bucket, key, version, superseded))
        return self.engine.apply(self.bucket, key, version, superseded)

    def holds(self, key):
        return sorted(v.version_id for v in self.engine.read(self.bucket, key))

    def test_a_replica_holding_what_the_coordinator_held_ends_with_the_new_version(self):
        old = write('p2')
        new = write('p2', held=[old])
        self.apply('k', old)
        self.assertTrue(self.apply('k', new, [old.version_id]))
        self.assertEqual(self.holds('k'), [new.version_id])
        self.assertEqual(self.engine.read(self.bucket, 'k')[0].value, new.value)

    def test_a_new_key_is_added(self):
        first = write('p2')
        self.assertTrue(self.apply('fresh', first, []))
        self.assertEqual(self.holds('fresh'), [first.version_id])

    def test_the_same_version_twice_is_stored_once(self):
        first = write('p2')
        self.assertTrue(self.apply('twice', first, []))
        self.assertTrue(self.apply('twice', first, []))
        self.assertEqual(self.holds('twice'), [first.version_id])

    def test_a_replica_holding_a_newer_version_keeps_only_that(self):
        old = write('p2')
        new = write('p2', held=[old])
        newer = write('p3', held=[new])
        self.apply('k', newer)
        self.assertFalse(self.apply('k', new, [old.version_id]))
        self.assertEqual(self.holds('k'), [newer.version_id])

    def test_a_sibling_the_coordinator_did_not_hold_stays_beside_the_new_version(self):
        base = write('p2')
        mine = write('p2', held=[base], context=base.full_clock)
        theirs = write('p3', held=[base], context=base.full_clock)
        self.apply('k', base)
        self.apply('k', theirs)
        self.assertTrue(self.apply('k', mine, [base.version_id]))
        self.assertEqual(self.holds('k'), sorted([mine.version_id, theirs.version_id]))

    def test_an_older_version_the_coordinator_did_not_list_is_dropped(self):
        # The replica holds a version the new one supersedes but the coordinator
        # no longer held (it had replaced it already): it goes too.
        first = write('p2')
        second = write('p2', held=[first])
        third = write('p2', held=[second])
        self.apply('k', first)
        self.assertTrue(self.apply('k', third, [second.version_id]))
        self.assertEqual(self.holds('k'), [third.version_id])


class TestApplyOnSQLite(support.OnSQLite, ApplySpecification, unittest.TestCase):
    pass


class TestApplyOnMariaDB(support.OnMariaDB, ApplySpecification, unittest.TestCase):
    pass


class TestApplyInHalvesOnMariaDB(support.OnMariaDB, ApplySpecification, unittest.TestCase):
    halves = True
