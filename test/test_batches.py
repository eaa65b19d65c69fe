"""Batches (POST /buckets/{bucket}/batch) on real MariaDB partitions: many
keys read, written and deleted in one request, each answered on its own;
what a batch refuses whole; partitions down or paused under a batch; and
that a batch goes to each partition as one query, not one per key."""
import base64
import json
import threading
import time
import unittest

from kvstore.coordinator.versions import Version
from kvstore.http.batches import MAX_BATCH_BYTES, MAX_OPERATIONS
from test import support
from test.api_base import ApiSpecification
from test.mariadb import shared_cluster
from test.test_failures import FAST, FailureCase, keys_on, server_of

BATCH = '/buckets/%s/batch'


def batch_body(operations):
    return json.dumps({'operations': operations}).encode()


class Batches:
    def batch(self, operations, status=200, params='', app=None, bucket=None):
        response = (app or self.app).post(BATCH % (bucket or self.bucket) + params, batch_body(operations),
                                          headers={'Content-Type': 'application/json'}, status=status)
        return response.json['results'] if status == 200 else response

    def put_many(self, values, **kwargs):
        return self.batch([{'op': 'put', 'key': k, 'value': v} for k, v in values.items()], **kwargs)

    def get_many(self, keys, **kwargs):
        return {item['key']: item for item in self.batch([{'op': 'get', 'key': k} for k in keys], **kwargs)}


class TestBatchesOnMariaDB(Batches, support.OnMariaDB, ApiSpecification, unittest.TestCase):

    def test_a_batch_writes_and_reads_many_keys_each_answered_in_order(self):
        values = {'k%03d' % i: 'value %d' % i for i in range(60)}
        values['binary'] = None
        operations = [{'op': 'put', 'key': k, 'value': v} for k, v in values.items() if v is not None]
        operations.append({'op': 'put', 'key': 'binary', 'value_base64': base64.b64encode(b'\x00\xff').decode(),
                           'content_type': 'application/x-thing'})
        written = self.batch(operations)
        self.assertEqual([(i['op'], i['key'], i['status']) for i in written],
                         [('put', o['key'], 201) for o in operations])
        for item in written:
            self.assertEqual(len(item['acknowledged']) + len(item['hints']), 3, item)   # every owner, not just W
            self.assertEqual(item['siblings'], 1)
        # Each is what a single GET answers, ETag and context included.
        read = self.get_many(list(values) + ['missing'])
        for key, value in values.items():
            single = self.get(key)
            self.assertEqual(read[key]['status'], 200)
            self.assertEqual(read[key]['etag'], single.headers['ETag'])
            self.assertEqual(read[key]['context'], single.headers['X-Context'])
            if value is not None:
                self.assertEqual((read[key]['value'], single.body), (value, value.encode()))
        self.assertEqual(read['binary']['value_base64'], 'AP8=')
        self.assertEqual(read['binary']['content_type'], 'application/x-thing')
        self.assertEqual(self.get('binary').body, b'\x00\xff')
        self.assertEqual((read['missing']['status'], read['missing']['code']), (404, 'not_found'))

    def test_contexts_and_preconditions_decide_each_operation_as_its_single_request_would(self):
        self.put_many({k: 'first' for k in ('ctx', 'sib', 'match', 'stale', 'exists', 'gone', 'keep')})
        seen = self.get_many(['ctx', 'sib', 'match', 'stale', 'gone', 'keep'])
        results = {i['key']: i for i in self.batch([
            {'op': 'put', 'key': 'ctx', 'value': 'second', 'context': seen['ctx']['context']},
            {'op': 'put', 'key': 'sib', 'value': 'alice', 'context': seen['sib']['context']},
            {'op': 'put', 'key': 'match', 'value': 'swapped', 'if_match': seen['match']['etag']},
            {'op': 'put', 'key': 'stale', 'value': 'lost', 'if_match': '"not-its-etag"'},
            {'op': 'put', 'key': 'exists', 'value': 'again', 'if_none_match': '*'},
            {'op': 'put', 'key': 'new', 'value': 'created', 'if_none_match': '*'},
            {'op': 'delete', 'key': 'gone', 'if_match': seen['gone']['etag']},
            {'op': 'delete', 'key': 'keep', 'if_match': '"not-its-etag"'},
            {'op': 'delete', 'key': 'never'},
        ])}
        self.assertEqual({k: i['status'] for k, i in results.items()},
                         {'ctx': 200, 'sib': 200, 'match': 200, 'stale': 412, 'exists': 412, 'new': 201,
                          'gone': 200, 'keep': 412, 'never': 404})
        for key in ('stale', 'exists', 'keep'):
            self.assertEqual(results[key]['code'], 'precondition_failed')
        self.assertEqual(results['never']['code'], 'not_found')
        self.assertTrue(results['gone']['deleted'])
        # A second writer from the same context leaves siblings, as two PUTs would.
        bob = self.batch([{'op': 'put', 'key': 'sib', 'value': 'bob', 'context': seen['sib']['context']}])[0]
        self.assertEqual((bob['status'], bob['siblings'], bob['context']), (200, 2, None))
        now = self.get_many(['ctx', 'sib', 'match', 'stale', 'exists', 'new', 'gone', 'keep'])
        self.assertEqual(now['ctx']['value'], 'second')
        self.assertEqual(now['sib']['status'], 300)
        self.assertEqual(sorted(s['value'] for s in now['sib']['siblings']), ['alice', 'bob'])
        self.assertEqual(self.get('sib', status=300).json['context'], now['sib']['context'])
        self.assertEqual(now['match']['value'], 'swapped')
        self.assertEqual(now['match']['etag'], results['match']['etag'])
        self.assertEqual((now['stale']['value'], now['exists']['value'], now['keep']['value']),
                         ('first', 'first', 'first'))
        self.assertEqual(now['new']['value'], 'created')
        self.assertEqual(now['gone']['status'], 404)
        # The siblings' context resolves them, in a batch as in a PUT.
        resolved = self.batch([{'op': 'put', 'key': 'sib', 'value': 'both', 'context': now['sib']['context']}])[0]
        self.assertEqual(resolved['siblings'], 1)
        self.assertEqual(self.get('sib').body, b'both')

    def test_a_bucket_deleted_with_force_and_written_again_by_a_batch_keeps_the_new_writes(self):
        self.put_many({'a': 'old', 'b': 'old'}, params='?w=all')
        self.app.delete('/buckets/%s?force=true' % self.bucket)
        self.assertEqual({k: i['status'] for k, i in self.get_many(['a', 'b']).items()}, {'a': 404, 'b': 404})
        # The fence the delete left refuses only versions dated before it.
        self.assertEqual([i['status'] for i in self.put_many({'a': 'new', 'c': 'new'}, params='?w=all')], [201, 201])
        self.assertEqual({k: i.get('value') for k, i in self.get_many(['a', 'b', 'c'], params='?r=all').items()},
                         {'a': 'new', 'b': None, 'c': 'new'})

    def test_a_replica_refuses_the_versions_of_a_batch_dated_before_its_bucket_was_dropped(self):
        engine = self.store.engines['p1']
        before = [Version.new({}, (engine.actor, i + 1), b'old', 'text/plain') for i in range(3)]
        time.sleep(0.01)
        engine.drop_keys(self.bucket, dropped=time.time_ns() // 1000)
        after = Version.new({}, (engine.actor, 9), b'new', 'text/plain')
        items = [('old%d' % i, v, []) for i, v in enumerate(before)] + [('new', after, [])]
        engine.finish_apply_many(engine.send_apply_many(self.bucket, items))   # counted as before the drop
        self.assertEqual({k: [v.value for v in engine.read(self.bucket, k)] for k, _, _ in items},
                         {'old0': [], 'old1': [], 'old2': [], 'new': [b'new']})

    def test_a_batch_s_writes_are_in_the_change_feed_each_once(self):
        written = {i['key']: i['etag'] for i in self.put_many({'k%02d' % i: 'v' for i in range(30)})}
        deleted = self.batch([{'op': 'delete', 'key': 'k00'}, {'op': 'delete', 'key': 'k01'}])
        changes = self.app.get('/buckets/%s/changes?since=0&limit=1000' % self.bucket).json['changes']
        self.assertEqual(sorted((c['key'], c['etag']) for c in changes if not c['deleted']),
                         sorted(written.items()))
        self.assertEqual(sorted(c['key'] for c in changes if c['deleted']), ['k00', 'k01'])
        self.assertEqual([i['status'] for i in deleted], [200, 200])

    def test_a_put_s_ttl_or_its_bucket_s_sets_its_expiry(self):
        self.app.put('/buckets/%s' % self.bucket, json.dumps({'ttl': 3600}), headers={'Content-Type': 'application/json'})
        self.batch([{'op': 'put', 'key': 'short', 'value': 'v', 'ttl': 60},
                    {'op': 'put', 'key': 'default', 'value': 'v'},
                    {'op': 'put', 'key': 'never', 'value': 'v', 'ttl': 'none'}])
        read = self.get_many(['short', 'default', 'never'])
        for key in ('short', 'default'):
            self.assertEqual(read[key]['expires_at'], self.get(key).headers['X-Expires-At'])
        self.assertLess(read['short']['expires_at'], read['default']['expires_at'])
        self.assertNotIn('expires_at', read['never'])
        refused = self.batch([{'op': 'put', 'key': 'k', 'value': 'v', 'ttl': -1}], status=400)
        self.assertError(refused, 400, 'bad_expiry')

    def test_quorums_of_the_query_apply_to_every_operation(self):
        self.assertEqual([i['status'] for i in self.put_many({'a': '1', 'b': '2'}, params='?w=all&pw=3')],
                         [201, 201])
        self.assertEqual({k: i['status'] for k, i in self.get_many(['a', 'b'], params='?r=all').items()},
                         {'a': 200, 'b': 200})
        refused = self.batch([{'op': 'get', 'key': 'a'}], status=400, params='?r=9')
        self.assertError(refused, 400, 'bad_parameter')

    def test_a_batch_goes_to_each_partition_as_one_query_not_one_per_key(self):
        keys = ['key-%d' % i for i in range(100)]
        self.put_many({'warm-%d' % i: 'v' for i in range(20)})   # connections open, the bucket's properties cached
        counted = len(support.sent_queries(lambda: self.put_many({k: 'v' for k in keys})))
        # A coordinator: the locking read, then the writes with the commit; a
        # replica: one compound statement.  Four partitions.
        self.assertLessEqual(counted, 4 * 2 + 4, counted)
        counted = len(support.sent_queries(lambda: self.get_many(keys)))
        self.assertLessEqual(counted, 4, counted)
        self.assertEqual({i['status'] for i in self.get_many(keys).values()}, {200})


class TestRefusedBatches(Batches, support.OnMariaDB, ApiSpecification, unittest.TestCase):
    """A batch refused whole: 400 or 413 with a code, and nothing of it done."""

    def refused(self, body, status, code, content_type='application/json'):
        response = self.app.post(BATCH % self.bucket, body, headers={'Content-Type': content_type}, status='*')
        self.assertError(response, status, code)
        self.assertEqual(self.app.get('/buckets/%s/keys' % self.bucket, status='*').status_int, 404,
                         'nothing of a refused batch is stored')
        return response

    def test_bad_bodies_are_400_with_a_code(self):
        put = {'op': 'put', 'key': 'k', 'value': 'v'}
        for body, code in [
                (b'not json', 'bad_body'), (b'', 'bad_body'), (b'[]', 'bad_body'), (b'{"operations": 3}', 'bad_body'),
                (b'{"operations": [], "extra": 1}', 'bad_body'), (b'[' * 100000, 'bad_body'),
                (batch_body([put, 'get k']), 'bad_operation'),
                (batch_body([put, {'op': 'patch', 'key': 'x'}]), 'bad_operation'),
                (batch_body([put, {'op': 'get'}]), 'bad_operation'),
                (batch_body([put, {'op': 'get', 'key': 7}]), 'bad_operation'),
                (batch_body([put, {'op': 'get', 'key': ''}]), 'bad_key'),
                (batch_body([put, {'op': 'get', 'key': 'x' * 2000}]), 'bad_key'),
                (batch_body([put, {'op': 'get', 'key': 'x', 'value': 'v'}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x'}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': 1}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': 'a', 'value_base64': 'YQ=='}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value_base64': 'not base64!'}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': '\ud800'}]), 'bad_operation'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': 'v', 'content_type': 'a, b'}]), 'bad_header'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': 'v', 'if_match': 'unquoted'}]), 'bad_header'),
                (batch_body([put, {'op': 'put', 'key': 'x', 'value': 'v', 'context': 'forged'}]), 'bad_context'),
                (batch_body([put, {'op': 'delete', 'key': 'x', 'vaule': 'typo'}]), 'bad_operation')]:
            with self.subTest(body=body[:60]):
                response = self.refused(body, 400, code)
                if code != 'bad_body':
                    self.assertEqual(response.json['index'], 1)

    def test_a_key_named_twice_refuses_the_batch(self):
        response = self.refused(batch_body([{'op': 'put', 'key': 'a', 'value': '1'}, {'op': 'get', 'key': 'b'},
                                            {'op': 'delete', 'key': 'a'}]), 400, 'duplicate_key')
        self.assertEqual((response.json['index'], response.json['key']), (2, 'a'))

    def test_limits_are_413_naming_the_limit(self):
        response = self.refused(batch_body([{'op': 'get', 'key': 'k%d' % i} for i in range(MAX_OPERATIONS + 1)]),
                                413, 'too_many_operations')
        self.assertEqual(response.json['limit'], MAX_OPERATIONS)
        self.assertEqual(len(self.get_many(['k%d' % i for i in range(MAX_OPERATIONS)])), MAX_OPERATIONS)
        value = 'x' * (MAX_BATCH_BYTES // 4)
        response = self.refused(batch_body([{'op': 'put', 'key': 'k%d' % i, 'value': value} for i in range(5)]),
                                413, 'batch_too_large')
        self.assertEqual(response.json['limit'], MAX_BATCH_BYTES)
        self.assertEqual(response.headers['Connection'], 'close')
        too_big = self.max_value_bytes + 1
        response = self.refused(batch_body([{'op': 'put', 'key': 'small', 'value': 'v'},
                                            {'op': 'put', 'key': 'big', 'value': 'x' * too_big}]),
                                413, 'value_too_large')
        self.assertEqual((response.json['index'], response.json['limit']), (1, self.max_value_bytes))

    def test_an_idempotency_key_is_refused(self):
        response = self.app.post(BATCH % self.bucket, batch_body([{'op': 'put', 'key': 'k', 'value': 'v'}]),
                                 headers={'Idempotency-Key': '"abc"'}, status='*')
        self.assertError(response, 400, 'bad_header')


class BatchFailureCase(Batches, FailureCase):
    """Four partitions on the shared cluster, N=3, R=2, W=2, short timeouts."""

    def read_back(self, keys):
        """What a fresh front end reads of keys once every server is back, r=2."""
        shared_cluster()
        fresh = support.open_store(self.partitions, **FAST)
        try:
            return {k: [v.value for v in fresh.get(self.bucket, k, r=2).current] for k in keys}
        finally:
            fresh.close()


class TestPartitionDownUnderABatch(BatchFailureCase):
    def test_each_operation_is_answered_on_its_own_and_none_acknowledged_is_lost(self):
        victim = 'p2'
        owned = keys_on(self.store, self.bucket, victim, 15)
        others = keys_on(self.store, self.bucket, victim, 15, owner=False, prefix='o')
        self.put_many({k: 'before' for k in owned + others}, params='?w=all')
        server_of(self.cluster, victim).kill()
        # pw=3: a write needs every owner, so a key the dead partition owns
        # fails, on its own; the others succeed beside it.
        results = {i['key']: i for i in self.put_many({k: 'after ' + k for k in owned + others}, params='?pw=3')}
        for key in owned:
            self.assertEqual((results[key]['status'], results[key]['code']), (503, 'unavailable'), results[key])
        for key in others:
            self.assertEqual(results[key]['status'], 200, results[key])
        # With the default quorums every write succeeds: the dead owner's copy is a hint.
        results = {i['key']: i for i in self.put_many({k: 'last ' + k for k in owned + others})}
        for key in owned + others:
            self.assertEqual(results[key]['status'], 200, results[key])
        for key in owned:
            self.assertIn(victim, results[key]['down'])
            self.assertIn(victim, results[key]['hints'])
        reads = self.get_many(owned + others)
        self.assertEqual({k: i['value'] for k, i in reads.items()}, {k: 'last ' + k for k in owned + others})
        self.assertEqual(self.read_back(owned + others), {k: [b'last ' + k.encode()] for k in owned + others})

    def test_a_partition_killed_mid_batch_loses_no_acknowledged_write(self):
        victim = 'p3'
        keys = ['m%d' % i for i in range(400)]
        killer = threading.Timer(0.05, server_of(self.cluster, victim).kill)
        killer.start()
        answers = []
        for start in range(0, len(keys), 100):   # the kill lands in one of these
            answers += self.put_many({k: 'value ' + k for k in keys[start:start + 100]})
        killer.join()
        acknowledged = [i['key'] for i in answers if i['status'] in (200, 201)]
        for item in answers:
            self.assertIn(item['status'], (200, 201, 503), item)
        self.assertGreater(len(acknowledged), 300)
        # A coordinator lost after its commit may leave its copy beside the retry's: the same value.
        self.assertEqual({k: set(v) for k, v in self.read_back(acknowledged).items()},
                         {k: {b'value ' + k.encode()} for k in acknowledged})


class TestPausedPartitionUnderABatch(BatchFailureCase):
    def test_a_paused_owner_gets_hints_and_the_batch_answers_within_the_timeout(self):
        victim = 'p1'
        owned = keys_on(self.store, self.bucket, victim, 10)
        others = keys_on(self.store, self.bucket, victim, 10, owner=False, prefix='o')
        server_of(self.cluster, victim).pause()
        results = {i['key']: i for i in self.put_many({k: 'v ' + k for k in owned + others})}
        for key in owned + others:
            self.assertIn(results[key]['status'], (200, 201), results[key])
        for key in owned:
            self.assertNotIn(victim, results[key]['acknowledged'], results[key])
            self.assertIn(victim, results[key]['hints'], results[key])
        read = self.get_many(owned + others)
        self.assertEqual({k: i['value'] for k, i in read.items()}, {k: 'v ' + k for k in owned + others})
        self.assertEqual(self.read_back(owned + others), {k: [b'v ' + k.encode()] for k in owned + others})


if __name__ == '__main__':
    unittest.main()
