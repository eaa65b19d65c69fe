"""Compare-and-swap and primary quorums under faults, on real mariadbd servers.

A conditional write (If-Match, If-None-Match, create-only POST, a conditional
DELETE) is decided only by the key's first owner, after it took in what a
majority of the owners hold; when that owner cannot be reached it is refused
with 503.  pr and pw count owners only, never fallbacks.
"""
import json
import threading
import urllib.parse

import sync
from kvstore.coordinator.writes import IdempotencyKey
from kvstore.errors import PreconditionFailed, Unavailable
from test import support
from test.blackhole import BlackHoleProxy
from test.sync_support import SyncCase, config_of, sync_once
from test.test_failures import FAST, FailureCase, server_of


class CompareAndSwapCase(FailureCase):
    def url(self, key, params=''):
        return '/buckets/%s/keys/%s%s' % (self.bucket, key, params)

    def first_owner(self, key):
        return self.store.ring.preference_list(self.bucket, key, 3)[0]

    def second_front_end(self, believes_down=()):
        """Another front end over the same partitions that believes the
        partitions named are down (as after a pause only it noticed)."""
        store = support.open_store(self.partitions, **dict(FAST, backoff=60.0, max_backoff=60.0))
        self.addCleanup(store.close)
        for name in believes_down:
            store.health.failed(name, 'timed out')
        return store, support.web_app(store)

    def if_match(self, app, key, etag, value, status='*'):
        return app.put(self.url(key), value, headers={'Content-Type': 'text/plain', 'If-Match': etag},
                       status=status)


class TestConditionalWritesHaveOneDecider(CompareAndSwapCase):
    def test_two_front_ends_that_disagree_about_the_first_owner_let_one_writer_of_an_etag_through(self):
        key = 'counter'
        first = self.first_owner(key)
        etag = self.put(self.app, key, b'0').headers['ETag']
        _, other = self.second_front_end(believes_down=[first])
        outcomes = [self.if_match(self.app, key, etag, b'1').status_int,
                    self.if_match(other, key, etag, b'2').status_int]
        # The front end that believes the first owner down may not decide:
        # 503 (retry), never a second 200 for the same ETag.
        self.assertEqual(outcomes, [200, 503])
        self.assertEqual(self.app.get(self.url(key)).body, b'1')

    def test_a_conditional_write_is_refused_while_the_first_owner_is_down_and_others_are_not(self):
        key = 'k'
        first = self.first_owner(key)
        etag = self.put(self.app, key, b'0').headers['ETag']
        server_of(self.cluster, first).kill()
        response = self.if_match(self.app, key, etag, b'1', status=503)
        self.assertEqual(response.json['code'], 'unavailable')
        self.assertIn(first, response.json['message'])
        create = self.app.post(self.url('new-key'), b'x', headers={'Content-Type': 'text/plain'}, status='*')
        if self.first_owner('new-key') == first:
            self.assertEqual(create.status_int, 503)
        # Unconditional writes keep their sloppy availability.
        self.put(self.app, key, b'unconditional', status=200)

    def test_the_first_owner_decides_with_what_the_other_owners_hold(self):
        key = 'k'
        first = self.first_owner(key)
        old = self.put(self.app, key, b'v1').headers['ETag']
        # A front end that believes the first owner down writes v2 through
        # the second owner: the first owner misses it.
        store, other = self.second_front_end(believes_down=[first])
        receipt = self.put(other, key, b'v2', params='?w=all').json
        self.assertNotIn(first, receipt['acknowledged'])
        store.close()
        self.assertEqual([v.value for v in self.store.engines[first].read(self.bucket, key)], [b'v1'])
        # v2 superseded the ETag of v1: compare-and-swap with it must fail,
        # not leave v3 beside v2 as a sibling.
        self.assertEqual(self.if_match(self.app, key, old, b'v3').status_int, 412)
        self.assertEqual(self.app.get(self.url(key)).body, b'v2')

    def test_conditional_delete_and_create_only_go_through_the_first_owner_too(self):
        key = 'k'
        first = self.first_owner(key)
        etag = self.put(self.app, key, b'v1').headers['ETag']
        _, other = self.second_front_end(believes_down=[first])
        self.app.delete(self.url(key), headers={'If-Match': etag}, status=200)
        self.assertEqual(other.delete(self.url(key), headers={'If-Match': etag}, status='*').status_int, 503)
        self.assertEqual(other.post(self.url(key), b'x', headers={'Content-Type': 'text/plain'},
                                    status='*').status_int, 503)
        self.app.post(self.url(key), b'x', headers={'Content-Type': 'text/plain'}, status=201)


class TestPrimaryQuorums(CompareAndSwapCase):
    def two_owners_down(self):
        key = 'k'
        owners = self.store.ring.preference_list(self.bucket, key, 3)
        self.put(self.app, key, b'v1', params='?w=all')
        for name in owners[:2]:
            server_of(self.cluster, name).kill()
        return key, owners

    def test_pr_counts_owners_only(self):
        key, owners = self.two_owners_down()
        # Sloppy r=2: the live owner and a fallback (which holds no copy).
        self.app.get(self.url(key, '?r=2'), status=200)
        response = self.app.get(self.url(key, '?r=2&pr=2'), status=503)
        self.assertEqual(response.json['code'], 'unavailable')
        self.app.get(self.url(key, '?pr=1'), status=200)

    def test_pw_counts_owners_only_and_the_receipt_says_how_many_of_each_answered(self):
        key, owners = self.two_owners_down()
        receipt = self.put(self.app, key, b'v2', params='?w=2').json
        self.assertEqual((receipt['owners_acknowledged'], receipt['fallbacks_acknowledged']), (1, 1))
        response = self.put(self.app, key, b'v3', params='?w=2&pw=2', status=503)
        self.assertIn('1 of them owners', response.json['message'])

    def test_a_bucket_sets_its_keys_default_primary_quorums(self):
        self.app.put('/buckets/%s' % self.bucket, json.dumps({'pr': 2, 'pw': 2}),
                     headers={'Content-Type': 'application/json'}, status=201)
        key, owners = self.two_owners_down()
        self.app.get(self.url(key), status=503)
        self.put(self.app, key, b'v2', status=503)
        self.app.get(self.url(key, '?pr=0'), status=200)

    def test_primary_quorums_are_validated(self):
        for bad in ('4', '-1', '²', 'x' * 5000, '9' * 5000):
            response = self.app.get(self.url('k', '?pr=%s' % urllib.parse.quote(bad)), status=400)
            self.assertEqual(response.json['parameter'], 'pr')
        self.app.put('/buckets/%s' % self.bucket, json.dumps({'pw': 4}),
                     headers={'Content-Type': 'application/json'}, status=400)


class TestConditionalWritesDuringAViewChange(SyncCase):
    """A partition added: one front end still on the four-partition ring, one
    restarted with the fifth, the new view recorded (sync.py's first step).
    They give some keys different first owners; compare-and-swap must still
    let exactly one writer of an ETag through."""

    ROUNDS = 60

    def test_two_front_ends_on_different_rings_acknowledge_one_writer_of_an_etag(self):
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)   # epoch 1: the four partitions
        five = dict(self.partitions, p5=dict(self.partitions['p1'],
                                             database=self.partitions['p1']['database'] + '_p5'))
        old, new = self.store, self.open(five)
        old_app, new_app = support.web_app(old), support.web_app(new)
        keys = [k for k in ('cas%d' % i for i in range(2000))
                if old.ring.preference_list(self.bucket, k, 3)[0] != new.ring.preference_list(self.bucket, k, 3)[0]]
        keys = keys[:self.ROUNDS]
        self.assertEqual(len(keys), self.ROUNDS)
        self.assertEqual(new.record_view()[0]['state'], 'rebalancing')

        forked, statuses = [], []
        for key in keys:
            url = '/buckets/%s/keys/%s' % (self.bucket, key)
            etag = old_app.put(url + '?w=3', b'0', headers={'Content-Type': 'text/plain'}).headers['ETag']
            start, answers = threading.Barrier(2), {}

            def write(name, app):
                start.wait()
                answers[name] = app.put(url, name.encode(), headers={'Content-Type': 'text/plain',
                                                                     'If-Match': etag}, status='*').status_int
            threads = [threading.Thread(target=write, args=(name, app))
                       for name, app in (('old', old_app), ('new', new_app))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            statuses.append(sorted(answers.values()))
            if sorted(answers.values()) == [200, 200]:
                forked.append(key)
            for app in (old_app, new_app):
                # Never siblings: the key holds the one acknowledged write.
                self.assertEqual(app.get(url + '?r=3', status='*').status_int, 200, key)
        self.assertEqual(forked, [], statuses)
        for answer in statuses:
            self.assertEqual(answer.count(200), 1, statuses)
            self.assertEqual(answer.count(412) + answer.count(503), 1, statuses)


    def test_a_write_that_fails_halfway_across_two_rings_is_held_by_the_old_first_owner_or_by_none(self):
        self.fail_halfway(record=False)

    def test_the_same_once_the_new_view_is_recorded(self):
        self.fail_halfway(record=True)

    def test_a_front_end_left_on_the_old_ring_after_the_rebalance_completes_refuses_them(self):
        """Once the new view is complete its ring's first owner decides; a
        front end whose configuration lacks it must not decide alone."""
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)
        five = dict(self.partitions, p5=dict(self.partitions['p1'],
                                             database=self.partitions['p1']['database'] + '_p5'))
        old, new = self.store, self.open(five)
        moved, kept = (next(k for k in ('done%d' % i for i in range(5000))
                            if (new.ring.preference_list(self.bucket, k, 3)[0] == 'p5') == is_moved)
                       for is_moved in (True, False))
        tags = {key: old.put(self.bucket, key, b'0', 'text/plain', w=3).version.digest for key in (moved, kept)}
        view = new.record_view()[0]
        self.assertTrue(new.views.complete_view(view))
        old.owners.forget_previous_rings()

        def if_match(key):
            def check(current):
                if [v.digest for v in current] != [tags[key]]:
                    raise PreconditionFailed('If-Match: the current version does not match')
            return check
        with self.assertRaises(Unavailable) as refused:
            old.put(self.bucket, moved, b'old', 'text/plain', check=if_match(moved), conditional=True)
        self.assertIn('p5', str(refused.exception))
        old.put(self.bucket, kept, b'old', 'text/plain', check=if_match(kept), conditional=True)
        new.put(self.bucket, moved, b'new', 'text/plain', check=if_match(moved), conditional=True)

    def test_a_write_held_by_the_anchor_alone_is_replayed_from_it(self):
        """The new view complete, its first owner p5 is the anchor and the
        old first owner still a decider: lost once the write was decided, the
        old one did not commit.  A retry with the same Idempotency-Key finds
        the record on p5 alone, and must answer with the version stored
        there (its clock the context to write on with), not one rebuilt."""
        _, key, _, proxy, new = self.grown('replayed')
        tag = new.put(self.bucket, key, b'0', 'text/plain', w=3).version.digest
        self.assertTrue(new.views.complete_view(new.record_view()[0]))
        new.owners.forget_previous_rings()
        retry = IdempotencyKey('retry-%s' % key, 'PUT text/plain')
        calls = []

        def if_match(current):
            calls.append(current)
            if [v.digest for v in current] != [tag]:
                raise PreconditionFailed('If-Match: the current version does not match')
            if len(calls) == 1:
                proxy.black_hole()
        with self.assertRaises(Unavailable):
            new.put(self.bucket, key, b'new', 'text/plain', check=if_match, conditional=True, idempotency=retry)
        stored = new.engines['p5'].read(self.bucket, key)
        self.assertEqual([v.value for v in stored], [b'new'])
        proxy.heal()
        receipts = []
        self.assertTrue(support.wait_until(lambda: self.replayed(new, key, if_match, retry, receipts), 10))
        self.assertTrue(receipts[-1].replayed)
        self.assertEqual((receipts[-1].version.version_id, receipts[-1].version.full_clock),
                         (stored[0].version_id, stored[0].full_clock))
        self.assertEqual([v.value for v in self.current(new, key)], [b'new'])

    def replayed(self, store, key, check, idempotency, receipts):
        """The write repeated with its Idempotency-Key: True once answered."""
        try:
            receipts.append(store.put(self.bucket, key, b'new', 'text/plain', check=check, conditional=True,
                                      idempotency=idempotency))
        except Unavailable:
            return False
        return True

    def test_once_the_old_ring_is_retired_its_first_owner_no_longer_decides(self):
        """The run after the rebalance completes compares every arc once more
        and retires the old ring: from then on a conditional write of a moved
        key needs only its new first owner, as before the change."""
        five, key, _, proxy, new = self.grown('retired')
        versions = [new.put(self.bucket, key, b'0', 'text/plain', w=3).version]

        def if_match(current):
            if [v.digest for v in current] != [versions[-1].digest]:
                raise PreconditionFailed('If-Match: the current version does not match')

        results = sync_once(config_of(five))[0]
        self.assertIn('rebalance: epoch 2 complete', results['rebalance'].summary)
        new.owners.forget_previous_rings()
        proxy.black_hole()
        with self.assertRaises(Unavailable):   # complete, not yet retired: both first owners decide
            new.put(self.bucket, key, b'1', 'text/plain', check=if_match, conditional=True)
        proxy.heal()
        results = sync_once(config_of(five))[0]
        self.assertIn('the ring before it no longer decides conditional writes', results['rebalance'].summary)
        self.assertEqual(sync_once(config_of(five))[0]['rebalance'].summary.count('no longer decides'), 0)
        new.owners.forget_previous_rings()
        proxy.black_hole()
        versions.append(new.put(self.bucket, key, b'2', 'text/plain', check=if_match, conditional=True).version)
        proxy.heal()
        self.assertEqual([v.value for v in self.current(new, key)], [b'2'])

    def grown(self, prefix):
        """Epoch 1 recorded over the four partitions; then (the five partitions'
        configuration, a key whose first owner moves to p5 from one not on
        p5's server, that old first owner, a BlackHoleProxy to it, and a
        five-partition front end that reaches the old first owner through it)."""
        self.assertEqual(sync_once(self.config)[2], sync.CONVERGED)
        five = dict(self.partitions, p5=dict(self.partitions['p1'],
                                             database=self.partitions['p1']['database'] + '_p5'))
        ring = self.open(five).ring
        key = next(k for k in ('%s%d' % (prefix, i) for i in range(5000))
                   if ring.preference_list(self.bucket, k, 3)[0] == 'p5'
                   and self.store.ring.preference_list(self.bucket, k, 3)[0] != 'p1')
        old_first = self.store.ring.preference_list(self.bucket, key, 3)[0]
        proxy = BlackHoleProxy(self.partitions[old_first]['port'])
        self.addCleanup(proxy.close)
        new = self.open(dict(five, **{old_first: dict(self.partitions[old_first], host='127.0.0.1',
                                                      port=proxy.port)}), **FAST)
        return five, key, old_first, proxy, new

    def fail_halfway(self, record):
        """The new front end decides with the old and the new first owner and
        loses the old one (a black hole) as it commits.  The old front end
        decides with the old first owner alone (with record, under the new
        view: with both): a version the new one stored on the new first owner
        only would fork the key (test_chaos found it)."""
        old = self.store
        _, key, _, proxy, new = self.grown('halfway')
        tag = old.put(self.bucket, key, b'0', 'text/plain', w=3).version.digest
        if record:
            self.assertEqual(new.record_view()[0]['state'], 'rebalancing')

        def if_match(black_hole):
            def check(current):
                if [v.digest for v in current] != [tag]:
                    raise PreconditionFailed('If-Match: the current version does not match')
                if black_hole:
                    proxy.black_hole()   # decided: the old first owner is lost from here on
            return check

        with self.assertRaises(Unavailable):
            new.put(self.bucket, key, b'new', 'text/plain', check=if_match(True), conditional=True)
        proxy.heal()
        try:
            old.put(self.bucket, key, b'old', 'text/plain', check=if_match(False), conditional=True)
        except PreconditionFailed:
            pass   # the new front end's write was committed on the old first owner: it counts
        for front_end in (old, new):
            current = self.current(front_end, key)
            self.assertEqual(len(current), 1, [(v.value, v.clock) for v in current])

    def current(self, store, key):
        """The key's current versions, read from all three owners once they answer."""
        reads = []

        def read():
            try:
                reads.append(store.get(self.bucket, key, r=3).current)
            except Unavailable:
                return False
            return True
        self.assertTrue(support.wait_until(read, 10))
        return reads[-1]


class TestIdempotencyKeys(CompareAndSwapCase):
    """Idempotency-Key (the IETF httpapi draft): a write repeated with the same
    key and body gets the first attempt's outcome, from any front end, even
    after other writes or an answer lost to a 503."""

    def send(self, app, method, key, body=b'', idempotency='"op-1"', status='*', headers=None, params=''):
        headers = dict({'Content-Type': 'text/plain', 'Idempotency-Key': idempotency}, **(headers or {}))
        if method == 'DELETE':
            return app.delete(self.url(key, params), headers=headers, status=status)
        return getattr(app, method.lower())(self.url(key, params), body, headers=headers, status=status)

    def values(self, key):
        response = self.app.get(self.url(key, '?r=3'), status='*')
        return [response.body] if response.status_int == 200 else response.status_int

    def test_a_repeated_write_gets_the_first_outcome_from_any_front_end(self):
        first = self.send(self.app, 'PUT', 'k', b'one', status=201)
        _, other = self.second_front_end()
        again = self.send(other, 'PUT', 'k', b'one', status=201)
        self.assertEqual(again.headers['ETag'], first.headers['ETag'])
        self.assertTrue(again.json['replayed'])
        self.assertNotIn('replayed', first.json)
        self.assertEqual(self.values('k'), [b'one'])
        self.assertEqual(len(self.store.get(self.bucket, 'k', r=3).versions), 1)

    def test_the_same_key_with_another_body_is_refused(self):
        self.send(self.app, 'PUT', 'k', b'one', status=201)
        refused = self.send(self.app, 'PUT', 'k', b'two', status=422)
        self.assertEqual(refused.json['code'], 'idempotency_key_reused')
        self.assertEqual(self.send(self.app, 'PUT', 'k', b'one', headers={'Content-Type': 'text/csv'},
                                   status=422).json['code'], 'idempotency_key_reused')
        self.assertEqual(self.values('k'), [b'one'])
        for bad in ('""', '"%s"' % ('x' * 256), '"tab\there"', 'two words', '"unterminated'):
            response = self.send(self.app, 'PUT', 'k', b'one', idempotency=bad, status=400)
            self.assertEqual(response.json['code'], 'bad_idempotency_key', bad)

    def test_a_compare_and_swap_retried_after_other_writes_is_not_applied_twice(self):
        etag = self.put(self.app, 'counter', b'0').headers['ETag']
        first = self.send(self.app, 'PUT', 'counter', b'1', headers={'If-Match': etag}, status=200)
        self.if_match(self.app, 'counter', first.headers['ETag'], b'2', status=200)
        # The retry of the first (its answer lost): its outcome, not a 412 that
        # would have the client read 2 and write 3.
        retry = self.send(self.app, 'PUT', 'counter', b'1', headers={'If-Match': etag}, status=200)
        self.assertEqual(retry.headers['ETag'], first.headers['ETag'])
        self.assertEqual(self.values('counter'), [b'2'])

    def test_a_write_answered_503_but_applied_is_retried_once(self):
        key = 'k'
        owners = self.store.ring.preference_list(self.bucket, key, 3)
        server_of(self.cluster, owners[2]).kill()
        lost = self.send(self.app, 'PUT', key, b'once', params='?pw=3', status=503)
        self.assertIn('may have been applied', lost.json['message'])
        # Repeated while the owner is still down: the first outcome again, and
        # again a hint for it, which must carry the whole version.
        again = self.send(self.app, 'PUT', key, b'once', params='?pw=3', status=503)
        self.assertIn('may have been applied', again.json['message'])
        server_of(self.cluster, owners[2]).restart()
        self.store.health.succeeded(owners[2])
        self.store.hand_off(owners[2])
        retry = self.send(self.app, 'PUT', key, b'once', params='?pw=3', status=201)
        self.assertTrue(retry.json['replayed'])
        self.assertEqual(sorted(retry.json['acknowledged']), sorted(owners))
        # Each owner holds the one version, with its value (the repeat copied it whole).
        self.assertEqual({o: [v.value for v in self.store.engines[o].read(self.bucket, key)] for o in owners},
                         dict.fromkeys(owners, [b'once']))
        self.assertEqual(self.values(key), [b'once'])
        self.assertEqual(len(self.store.get(self.bucket, key, r=3).versions), 1)

    def test_a_create_with_a_server_chosen_key_and_a_delete_are_idempotent_too(self):
        collection = '/buckets/%s/keys' % self.bucket
        headers = {'Content-Type': 'text/plain', 'Idempotency-Key': '"create-1"'}
        created = self.app.post(collection, b'x', headers=headers, status=201)
        again = self.app.post(collection, b'x', headers=headers, status=201)
        self.assertEqual(again.headers['Location'], created.headers['Location'])
        self.assertEqual(len(self.app.get(collection).json['keys']), 1)
        key = created.headers['Location'].rsplit('/', 1)[1]
        self.send(self.app, 'DELETE', key, idempotency='"delete-1"', status=200)
        self.assertTrue(self.send(self.app, 'DELETE', key, idempotency='"delete-1"', status=200).json['replayed'])


class TestIfUnmodifiedSince(CompareAndSwapCase):
    """Dates are whole seconds: two writers holding the same Last-Modified,
    writing within that second, must not both be answered 200."""

    def test_two_writers_holding_one_last_modified_let_one_through(self):
        outcomes = []
        for i in range(10):
            key = 'dated%d' % i
            self.put(self.app, key, b'0')
            date = self.app.get(self.url(key)).headers['Last-Modified']
            outcomes.append(sorted(
                self.app.put(self.url(key), value, headers={'Content-Type': 'text/plain',
                                                             'If-Unmodified-Since': date}, status='*').status_int
                for value in (b'1', b'2')))
        self.assertEqual(outcomes, [[200, 412]] * 10)
        # A date after the last write still lets a write through.
        later = 'Fri, 31 Dec 2100 23:59:59 GMT'
        self.app.put(self.url('dated0'), b'3', headers={'Content-Type': 'text/plain', 'If-Unmodified-Since': later},
                     status=200)


class TestDeleteFindsWhatTheOwnersHold(CompareAndSwapCase):
    def test_a_delete_coordinated_by_an_owner_that_missed_the_write_deletes_the_key(self):
        key = 'k'
        first = self.first_owner(key)
        store, other = self.second_front_end(believes_down=[first])
        self.put(other, key, b'v', status=201)   # on the other two owners, not the first
        store.close()
        self.assertEqual(self.store.engines[first].read(self.bucket, key), [])
        self.assertEqual(self.app.delete(self.url(key), status='*').status_int, 200)
        self.assertEqual(self.app.get(self.url(key, '?r=3'), status='*').status_int, 404)
