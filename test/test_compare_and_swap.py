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
from test import support
from test.sync_support import SyncCase, sync_once
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
