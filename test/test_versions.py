"""Versions of a key (versions.py): dotted version vectors and how replicas
reconcile them.

A version names its own write event (`dot`: coordinator, counter) apart from
what its writer had seen (`clock`).  A write supersedes exactly the versions
its writer had seen; writes that did not see each other survive as siblings.
"""
import base64
import dataclasses
import json
import unittest

import time

from kvstore.coordinator.versions import (BadContext, Version, actor_partition, context_binding, context_limit,
                                          context_of, decode_context, decode_token, encode_context, next_dot, prune,
                                          reconcile, resolve)


def write(actor, held=(), context=None, value=b'v', content_type='text/plain'):
    """A write coordinated by `actor` the way the datastore makes one: with the
    client's context, or (without one) with the context of what the coordinator holds.
    Counters here come from what is held alone (now=0: no time floor, see TestNextDot)."""
    seen = context if context is not None else context_of(held)
    return Version.new(seen, next_dot(actor, held, seen, now=0), value, content_type)


def as_read_from_another_replica(version):
    """The same version as another replica returns it: an equal, separate object."""
    return dataclasses.replace(version, clock=dict(version.clock))


class TestVersionNew(unittest.TestCase):

    def test_a_new_version_carries_its_value_clock_dot_and_digest(self):
        version = Version.new({'p2': 4}, ('p1', 7), b'hello', 'text/plain')
        self.assertEqual(version.value, b'hello')
        self.assertEqual(version.content_type, 'text/plain')
        self.assertEqual(version.clock, {'p2': 4})
        self.assertEqual(version.dot, ('p1', 7))
        self.assertFalse(version.deleted)
        self.assertEqual(version.digest, '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824')
        self.assertEqual(version.etag, '"%s"' % version.version_id)   # a version's own, not its bytes'
        self.assertEqual(version.full_clock, {'p1': 7, 'p2': 4})

    def test_every_new_version_has_its_own_id(self):
        ids = {Version.new({}, ('p1', 1), b'same', 'text/plain').version_id for _ in range(100)}
        self.assertEqual(len(ids), 100)

    def test_a_tombstone_has_no_value(self):
        tombstone = Version.new({'p1': 1}, ('p1', 2), b'ignored', '', deleted=True)
        self.assertTrue(tombstone.deleted)
        self.assertEqual(tombstone.value, b'')

    def test_the_clock_is_a_copy_of_the_context(self):
        context = {'p1': 1}
        version = Version.new(context, ('p1', 2), b'v', 'text/plain')
        context['p1'] = 99
        self.assertEqual(version.clock, {'p1': 1})


class TestSupersedes(unittest.TestCase):

    def test_a_write_made_with_the_context_of_a_version_supersedes_it(self):
        first = write('p1')
        second = write('p1', held=[first], context=context_of([first]))
        self.assertTrue(second.supersedes(first))
        self.assertFalse(first.supersedes(second))

    def test_a_version_does_not_supersede_itself(self):
        version = write('p1')
        self.assertFalse(version.supersedes(version))
        self.assertFalse(version.supersedes(as_read_from_another_replica(version)))

    def test_two_writes_with_the_same_stale_context_through_the_same_coordinator_are_siblings(self):
        # The reason for dotted version vectors.  Both clients read `first` and
        # write with its context through p1.  With plain vector clocks the
        # second write's clock {p1: 3} would dominate the first's {p1: 2} and
        # silently drop it; with dots, neither writer saw the other's write.
        first = write('p1')
        stale = context_of([first])
        a = write('p1', held=[first], context=stale, value=b'a')
        b = write('p1', held=[a], context=stale, value=b'b')  # p1 now holds a, not first
        self.assertEqual(a.dot, ('p1', 2))
        self.assertEqual(b.dot, ('p1', 3))
        self.assertFalse(a.supersedes(b))
        self.assertFalse(b.supersedes(a))
        self.assertTrue(a.supersedes(first))
        self.assertTrue(b.supersedes(first))

    def test_writes_through_different_coordinators_without_each_others_context_are_siblings(self):
        base = write('p1')
        a = write('p1', held=[base], context=context_of([base]))
        b = write('p2', held=[base], context=context_of([base]))
        self.assertFalse(a.supersedes(b))
        self.assertFalse(b.supersedes(a))

    def test_a_write_with_the_context_of_two_siblings_supersedes_both(self):
        first = write('p1')
        a = write('p1', held=[first], context=context_of([first]))
        b = write('p1', held=[a], context=context_of([first]))
        merged = write('p2', held=[a, b], context=context_of([a, b]))
        self.assertTrue(merged.supersedes(a))
        self.assertTrue(merged.supersedes(b))

    def test_when_two_versions_have_seen_each_other_exactly_one_supersedes_the_later(self):
        # Only after a partition lost its counters; the order must stay total.
        older = Version.new({'p1': 5}, ('p1', 5), b'old', 'text/plain')
        newer = Version.new({'p1': 5}, ('p1', 5), b'new', 'text/plain')
        older.modified, newer.modified = 1_000_000, 2_000_000
        self.assertTrue(newer.supersedes(older))
        self.assertFalse(older.supersedes(newer))


class TestReconcile(unittest.TestCase):
    """How a replica holding some versions takes in one sent by a coordinator."""

    def test_an_incoming_version_already_held_changes_nothing(self):
        held = write('p1')
        self.assertEqual(reconcile([held], as_read_from_another_replica(held)), ([], False))

    def test_an_incoming_version_superseded_by_a_held_one_changes_nothing(self):
        old = write('p1')
        new = write('p1', held=[old])
        self.assertEqual(reconcile([new], old), ([], False))

    def test_an_incoming_version_that_supersedes_held_ones_replaces_them(self):
        first = write('p1')
        a = write('p1', held=[first], context=context_of([first]))
        b = write('p1', held=[a], context=context_of([first]))
        resolved = write('p2', held=[a, b])
        drop, keep = reconcile([a, b], resolved)
        self.assertTrue(keep)
        self.assertEqual(sorted(drop), sorted([a.version_id, b.version_id]))

    def test_a_concurrent_incoming_version_is_kept_beside_the_held_one(self):
        base = write('p1')
        a = write('p1', held=[base], context=context_of([base]))
        b = write('p2', held=[base], context=context_of([base]))
        self.assertEqual(reconcile([a], b), ([], True))

    def test_a_held_version_that_another_held_one_supersedes_is_dropped_too(self):
        # What a replica holds after taking a version in without looking first
        # (the one-round-trip apply): set right by the next reconcile.
        old = write('p1')
        new = write('p1', held=[old])
        self.assertEqual(reconcile([old, new], new), ([old.version_id], False))
        self.assertEqual(reconcile([new, old], old), ([old.version_id], False))

    def test_only_the_held_versions_the_incoming_one_supersedes_are_dropped(self):
        base = write('p1')
        a = write('p1', held=[base], context=context_of([base]))
        b = write('p2', held=[base], context=context_of([base]))
        after_a = write('p1', held=[a], context=context_of([a]))  # saw a, not b
        drop, keep = reconcile([a, b], after_a)
        self.assertTrue(keep)
        self.assertEqual(drop, [a.version_id])

    def test_a_replica_holding_nothing_keeps_the_incoming_version(self):
        self.assertEqual(reconcile([], write('p1')), ([], True))


class TestResolve(unittest.TestCase):
    """Merging what several replicas answered into the current versions."""

    def test_resolve_returns_the_versions_no_other_supersedes(self):
        old = write('p1')
        new = write('p1', held=[old])
        current = resolve([[old], [new], [old]])
        self.assertEqual([v.version_id for v in current], [new.version_id])

    def test_resolve_keeps_concurrent_versions_once_each(self):
        base = write('p1')
        a = write('p1', held=[base], context=context_of([base]))
        b = write('p2', held=[base], context=context_of([base]))
        a.modified, b.modified = 1_000_000, 2_000_000
        replies = [[a, b], [as_read_from_another_replica(a)],
                   [as_read_from_another_replica(b), as_read_from_another_replica(a)], [base]]
        current = resolve(replies)
        # Deduplicated by version, oldest first.
        self.assertEqual([v.version_id for v in current], [a.version_id, b.version_id])

    def test_resolve_keeps_a_tombstone_that_supersedes_the_value(self):
        value = write('p1')
        seen = context_of([value])
        tombstone = Version.new(seen, next_dot('p2', [value], seen, now=0), b'', '', deleted=True)
        current = resolve([[value], [tombstone]])
        self.assertEqual([v.version_id for v in current], [tombstone.version_id])

    def test_resolve_of_no_replies_is_empty(self):
        self.assertEqual(resolve([]), [])
        self.assertEqual(resolve([[], []]), [])


class TestNextDot(unittest.TestCase):

    def test_the_first_write_of_a_coordinator_is_counter_one(self):
        self.assertEqual(next_dot('p1', [], {}, now=0), ('p1', 1))

    def test_next_dot_is_above_the_counters_of_held_versions(self):
        held = [Version.new({'p1': 3}, ('p1', 5), b'a', 'text/plain'),
                Version.new({'p1': 8}, ('p2', 1), b'b', 'text/plain')]
        self.assertEqual(next_dot('p1', held, {}, now=0), ('p1', 9))
        self.assertEqual(next_dot('p1', held, {'p1': 2}, now=0), ('p1', 9))

    def test_next_dot_is_above_the_counter_in_the_context(self):
        held = [Version.new({}, ('p1', 2), b'a', 'text/plain')]
        self.assertEqual(next_dot('p1', held, {'p1': 7, 'p2': 40}, now=0), ('p1', 8))

    def test_next_dot_ignores_other_coordinators_counters(self):
        held = [Version.new({'p2': 10}, ('p3', 20), b'a', 'text/plain')]
        self.assertEqual(next_dot('p1', held, {'p2': 30}, now=0), ('p1', 1))

    def test_next_dot_is_no_lower_than_the_time(self):
        before = time.time_ns() // 1000
        actor, counter = next_dot('p1.a1', [Version.new({}, ('p1.a1', 2), b'a', 'text/plain')], {'p1.a1': 7})
        self.assertEqual(actor, 'p1.a1')
        self.assertGreaterEqual(counter, before)
        self.assertLessEqual(counter, time.time_ns() // 1000)

    def test_a_coordinator_that_lost_what_it_held_does_not_reuse_a_counter(self):
        # A partition restored from a backup (same incarnation) holds less than
        # it issued: its next write must still number above the earlier ones.
        issued = Version.new({}, next_dot('p1.a1', [], {}), b'v3', 'text/plain')
        time.sleep(0.002)
        again = Version.new({}, next_dot('p1.a1', [], {}), b'new', 'text/plain')
        self.assertGreater(again.dot[1], issued.dot[1])
        self.assertFalse(issued.supersedes(again))


class TestPrune(unittest.TestCase):

    def test_a_clock_within_the_limit_is_kept_whole(self):
        clock = {'p1.a': 5, 'p1.b': 3, 'gone.c': 1}
        self.assertEqual(prune(clock, {'p1'}, 3), clock)

    def test_actors_are_judged_by_their_partition(self):
        self.assertEqual(actor_partition('p1.3f9a'), 'p1')
        self.assertEqual(actor_partition('p1'), 'p1')
        # p1's current incarnation is not dropped as "not configured".
        self.assertEqual(prune({'p1.new': 9, 'p2.x': 4, 'old.y': 7}, {'p1', 'p2'}, 2),
                         {'p1.new': 9, 'p2.x': 4})

    def test_old_incarnations_age_out_before_any_current_one(self):
        clock = {'p1': 3, 'p1.a': 10, 'p1.b': 2_000_000, 'p2.c': 1, 'p3.d': 1}
        self.assertEqual(prune(clock, {'p1', 'p2', 'p3'}, 3), {'p1.b': 2_000_000, 'p2.c': 1, 'p3.d': 1})

    def test_pruning_never_makes_a_newer_version_older(self):
        old = Version.new({}, ('p1.a', 4), b'old', 'text/plain')
        seen = prune({'p1.a': 4, 'p1.b': 20, 'p2.c': 1}, {'p1', 'p2'}, 2)
        new = Version.new(seen, next_dot('p1.b', [old], seen, now=0), b'new', 'text/plain')
        self.assertFalse(old.supersedes(new))
        self.assertEqual(resolve([[old, new]])[-1].value, b'new')


class TestContexts(unittest.TestCase):
    partitions = {'p1', 'p2', 'p3', 'node-x_9'}

    def test_context_of_merges_every_version_with_its_dot(self):
        a = Version.new({'p1': 2, 'p2': 1}, ('p1', 3), b'a', 'text/plain')
        b = Version.new({'p1': 1, 'p3': 4}, ('p2', 6), b'b', 'text/plain')
        self.assertEqual(context_of([a, b]), {'p1': 3, 'p2': 6, 'p3': 4})
        self.assertEqual(context_of([]), {})

    def test_an_encoded_context_decodes_to_the_same_clock(self):
        for clock in ({}, {'p1': 1}, {'p1': 3, 'p2': 6, 'node-x_9': 2 ** 40}):
            text = encode_context(clock, 'b', 'k')
            self.assertIsInstance(text, str)
            self.assertEqual(decode_context(text, self.partitions, 'b', 'k'), clock)

    def test_an_encoded_context_is_safe_in_a_header_and_a_url(self):
        text = encode_context({'p1': 3, 'p2': 6, 'p3': 4}, 'b', 'k')
        self.assertRegex(text, r'\A[A-Za-z0-9_-]+\Z')

    def test_decode_context_tolerates_surrounding_whitespace(self):
        self.assertEqual(decode_context('  %s\t' % encode_context({'p1': 2}, 'b', 'k'), self.partitions, 'b', 'k'), {'p1': 2})

    def test_decode_context_rejects_garbage(self):
        for text in ('', 'not a context!', '%%%%', 'é', 'a', base64.urlsafe_b64encode(b'\xff\xfe{').decode()):
            with self.assertRaises(BadContext, msg=repr(text)):
                decode_context(text, self.partitions, 'b', 'k')

    def test_decode_context_rejects_json_that_is_not_an_object(self):
        for document in ([1, 2], 'p1', 3, None, [['p1', 1]]):
            with self.assertRaises(BadContext, msg=repr(document)):
                decode_context(self.encoded(document), self.partitions, 'b', 'k')

    def test_decode_context_rejects_counters_that_are_not_positive_whole_numbers(self):
        for counter in (-1, 0, True, False, 1.5, '3', None, [1]):
            with self.assertRaises(BadContext, msg=repr(counter)):
                decode_context(self.bound({'p1': counter}), self.partitions, 'b', 'k')

    def test_decode_context_refuses_counters_from_the_future_beyond_the_allowed_skew(self):
        now = time.time()
        for ahead, taken in ((-3600, True), (0, True), (59, True), (61, False), (86400, False)):
            text = self.bound({'p1.3f9a0c2d41b7': int((now + ahead) * 1e6), 'p2': 5})
            if taken:
                self.assertEqual(decode_context(text, self.partitions, 'b', 'k', max_skew=60, now=now)['p2'], 5)
            else:
                with self.assertRaisesRegex(BadContext, 'ahead', msg=ahead):
                    decode_context(text, self.partitions, 'b', 'k', max_skew=60, now=now)

    def test_a_bad_context_is_a_value_error_with_a_message_for_people(self):
        with self.assertRaises(ValueError) as caught:
            decode_context('garbage', self.partitions, 'b', 'k')
        self.assertIn('context', str(caught.exception))

    def test_decode_context_takes_actors_the_store_mints_for_configured_partitions_only(self):
        minted = {'p1': 1, 'p2.3f9a0c2d41b7': 2, 'node-x_9.000000000000': 3}
        self.assertEqual(decode_context(self.bound(minted), self.partitions, 'b', 'k'), minted)
        for clock in ({'p4': 1}, {'': 1}, {'.p1': 1}, {'p1x': 1}, {'P1': 1}, {'p2.3f9a': 2}, {'p2.x.y': 3},
                      {'p2.3F9A0C2D41B7': 1}, {'p2.3f9a0c2d41b7.1': 1}, {'p1.' + 'a' * 2900: 1}):
            with self.assertRaises(BadContext, msg=repr(clock)[:40]):
                decode_context(self.bound(clock), self.partitions, 'b', 'k')

    def test_decode_context_bounds_entries_characters_counters_and_nesting(self):
        # Twice the store's own bound of max(8, 2 x partitions) entries.
        bound = {'p1.%012x' % i: 1 for i in range(16)}
        self.assertEqual(decode_context(self.bound(bound), self.partitions, 'b', 'k'), bound)
        nested = base64.urlsafe_b64encode(b'[' * 3000).decode()
        for text in (self.bound(dict(bound, p2=1)), self.bound({'p1.' + 'x' * 4000: 1}),
                     self.bound({'p1': 2 ** 63}), nested):
            with self.assertRaises(BadContext, msg=text[:40]):
                decode_context(text, self.partitions, 'b', 'k', now=2 ** 63)
        self.assertEqual(decode_context(self.bound({'p1': 2 ** 63 - 1}), self.partitions, 'b', 'k', now=2 ** 63),
                         {'p1': 2 ** 63 - 1})

    def test_a_context_is_bound_to_its_key(self):
        text = encode_context({'p1': 3}, 'b', 'k')
        self.assertEqual(decode_context(text, self.partitions, 'b', 'k'), {'p1': 3})
        # The same key in another bucket, another key, and the NUL that parts them.
        for bucket, key in (('c', 'k'), ('b', 'k2'), ('b', 'K'), ('b\0k', ''), ('', 'b\0k')):
            with self.assertRaisesRegex(BadContext, 'belongs to another key', msg=(bucket, key)):
                decode_context(text, self.partitions, bucket, key)
        self.assertNotEqual(encode_context({'p1': 3}, 'b', 'k'), encode_context({'p1': 3}, 'b', 'k2'))

    def test_a_bound_context_must_be_exactly_a_clock_and_a_binding(self):
        binding = json.loads(decode_token(encode_context({}, 'b', 'k')))['k']
        for document in ({'k': binding}, {'k': binding, 'c': {'p1': 1}, 'x': 1}, {'k': binding, 'c': [1]},
                         {'k': binding, 'c': {'p1': 0}}):
            with self.assertRaises(BadContext, msg=repr(document)):
                decode_context(self.encoded(document), self.partitions, 'b', 'k')

    def test_a_plain_clock_context_bound_to_no_key_is_refused(self):
        # The form contexts had before they were bound: a clock of another key
        # would cover this key's versions.
        for bucket, key in (('b', 'k'), ('other', 'key')):
            with self.assertRaisesRegex(BadContext, 'not one this store issued', msg=(bucket, key)):
                decode_context(self.encoded({'p1': 3}), self.partitions, bucket, key)

    def test_an_issued_context_holds_minted_actors_only_and_always_covers_the_versions(self):
        forged = {'p1.' + 'a' * 2900: 7, 'p2.' + 'b' * 2900: 8, 'p1.x': 9}
        a = Version.new(dict(forged, p3=1), ('p1.3f9a0c2d41b7', 3), b'a', 'text/plain')
        self.assertEqual(context_of([a]), {'p1.3f9a0c2d41b7': 3, 'p3': 1})
        # Well-formed forged actors with higher counters never push out a dot.
        many = {'p%d.%012x' % (1 + i % 3, i): 10 ** 9 + i for i in range(40)}
        siblings = [Version.new(many, ('p%d.3f9a0c2d41b7' % n, 5), b's', 'text/plain') for n in (1, 2, 3)]
        context = context_of(siblings, self.partitions)
        self.assertLessEqual(len(context), context_limit(self.partitions))
        self.assertTrue(all(context.get(v.dot[0]) == 5 for v in siblings), context)
        text = encode_context(context, 'b', 'k')
        self.assertEqual(decode_context(text, self.partitions, 'b', 'k', now=2 * 10 ** 3), context)

    def test_with_a_secret_only_a_context_signed_with_it_is_taken(self):
        secret = 's' * 40
        text = encode_context({'p1.3f9a0c2d41b7': 3}, 'b', 'k', secret)
        self.assertEqual(decode_context(text, self.partitions, 'b', 'k', secret=secret), {'p1.3f9a0c2d41b7': 3})
        signed = json.loads(decode_token(text))
        for document in (dict(signed, c={'p1.3f9a0c2d41b7': 4}), dict(signed, c={'p1.3f9a0c2d41b7': 3, 'p2': 1}),
                         {'c': signed['c'], 'k': signed['k']}, dict(signed, s=signed['s'].upper()),
                         dict(signed, s=None), dict(signed, x=1)):
            with self.assertRaises(BadContext, msg=repr(document)):
                decode_context(self.encoded(document), self.partitions, 'b', 'k', secret=secret)
        for other in ('t' * 40, None):   # another secret, or none: not taken either
            with self.assertRaises(BadContext, msg=other):
                decode_context(text, self.partitions, 'b', 'k', secret=other)
        with self.assertRaisesRegex(BadContext, 'another key'):
            decode_context(text, self.partitions, 'b', 'k2', secret=secret)

    @staticmethod
    def bound(clock):
        """A context bound to b/k holding a clock of the test's choosing."""
        return TestContexts.encoded({'c': clock, 'k': context_binding('b', 'k')})

    @staticmethod
    def encoded(document):
        return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip('=')


if __name__ == '__main__':
    unittest.main()
