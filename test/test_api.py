"""The HTTP API's values, as a specification run against SQLite and real MariaDB
partitions: writing, reading, replacing and deleting one, its key, the limits
and parameters of a request.  The rest of the specification: test_api_negotiation.py
(documents and errors), test_api_versions.py (contexts, siblings, conditional
requests, ETags), test_api_metadata.py, test_api_buckets.py (buckets, listings).
"""
import json
import random
import time
import unittest
import urllib.parse

from kvstore.errors import BadRequest
from kvstore.http.request import parse_query
from test import support
from test.api_base import KEY, KEYS, ApiSpecification


class ValueSpecification(ApiSpecification):
    """Writes, reads and deletes of values."""

    # -- create, read, replace, delete -----------------------------------------

    def test_put_creates_with_201_then_replaces_with_200(self):
        created = self.put('k', b'one')
        self.assertEqual(created.status_int, 201)
        self.assertEqual(created.headers['Location'], KEY % (self.bucket, 'k'))
        replaced = self.put('k', b'two')
        self.assertEqual(replaced.status_int, 200)
        self.assertNotIn('Location', replaced.headers)
        self.assertEqual(self.get('k').body, b'two')

    def test_write_receipt_names_version_placement_and_acknowledgements(self):
        receipt = self.put('k', b'v').json
        self.assertEqual((receipt['bucket'], receipt['key']), (self.bucket, 'k'))
        self.assertEqual(len(receipt['preference_list']), 3)
        self.assertEqual(len(set(receipt['preference_list'])), 3)
        self.assertGreaterEqual(len(receipt['acknowledged']), 2)
        self.assertTrue(set(receipt['acknowledged']) <= set(receipt['preference_list']))
        self.assertEqual(receipt['coordinator'], receipt['preference_list'][0])
        # One entry: the coordinator's incarnation ("p1.<id>"), numbered no lower than the time.
        [(actor, counter)] = receipt['clock'].items()
        self.assertEqual(actor, self.store.engines[receipt['coordinator']].actor)
        self.assertEqual(actor.split('.')[0], receipt['coordinator'])
        self.assertGreater(counter, (time.time() - 60) * 1e6)
        self.assertTrue(receipt['etag'].startswith('"'))
        self.assertTrue(receipt['context'])

    def test_get_returns_the_stored_bytes_type_etag_and_context(self):
        body = bytes(range(256))
        written = self.put('bin', body, content_type='application/x-thing')
        got = self.get('bin')
        self.assertEqual(got.body, body)
        self.assertEqual(got.headers['Content-Type'], 'application/x-thing')
        self.assertEqual(got.headers['ETag'], written.headers['ETag'])
        self.assertEqual(got.headers['X-Context'], written.headers['X-Context'])
        self.assertIn('Last-Modified', got.headers)

    def test_missing_content_type_is_stored_as_octet_stream(self):
        self.app.put(KEY % (self.bucket, 'raw'), b'\x00\x01', headers={'Content-Type': ''})
        self.assertEqual(self.get('raw').headers['Content-Type'], 'application/octet-stream')

    def test_a_content_type_with_control_characters_is_400_and_stores_nothing(self):
        for content_type in ('text/plain\x1fx', 'text/plain; a=\x01'):
            response = self.put('ctl', b'v', content_type=content_type, status=400)
            self.assertError(response, 400, 'bad_header')
        self.get('ctl', status=404)

    def test_form_field_value_is_stored_as_utf8_text(self):
        self.app.put(KEY % (self.bucket, 'form'), {'value': 'héllo'})
        got = self.get('form')
        self.assertEqual(got.headers['Content-Type'], 'text/plain; charset=utf-8')
        self.assertEqual(got.body.decode('utf-8'), 'héllo')

    def test_form_without_value_field_is_400_and_stores_nothing(self):
        response = self.app.put(KEY % (self.bucket, 'form'), {'other': 'x'}, status=400)
        self.assertError(response, 400, 'bad_body')
        self.get('form', status=404)

    def test_post_to_a_key_creates_only(self):
        created = self.app.post(KEY % (self.bucket, 'once'), b'first', headers={'Content-Type': 'text/plain'})
        self.assertEqual(created.status_int, 201)
        self.assertTrue(created.headers['Location'].endswith(KEY % (self.bucket, 'once')))
        again = self.app.post(KEY % (self.bucket, 'once'), b'second',
                              headers={'Content-Type': 'text/plain'}, status=409)
        self.assertError(again, 409, 'already_exists')
        self.assertEqual(self.get('once').body, b'first')

    def test_post_to_bucket_keys_chooses_a_key(self):
        created = self.app.post(KEYS % self.bucket, b'chosen', headers={'Content-Type': 'text/plain'})
        self.assertEqual(created.status_int, 201)
        location = created.headers['Location']
        self.assertEqual(self.app.get(location).body, b'chosen')
        self.assertEqual(created.json['key'], location.rsplit('/', 1)[1])

    def test_head_gives_headers_and_length_without_body(self):
        self.put('h', b'12345')
        head = self.app.head(KEY % (self.bucket, 'h'))
        self.assertEqual(head.status_int, 200)
        self.assertEqual(head.headers['Content-Length'], '5')
        self.assertEqual(head.body, b'')
        self.assertEqual(self.app.head(KEY % (self.bucket, 'nothing'), status=404).status_int, 404)

    def test_delete_answers_a_receipt_then_the_key_is_gone(self):
        self.put('d', b'x')
        deleted = self.app.delete(KEY % (self.bucket, 'd'))
        self.assertEqual(deleted.status_int, 200)
        self.assertTrue(deleted.json['deleted'])
        self.assertError(self.get('d', status=404), 404, 'not_found')
        self.assertError(self.app.delete(KEY % (self.bucket, 'd'), status=404), 404, 'not_found')

    def test_a_deleted_key_can_be_written_again_as_new(self):
        self.put('again', b'1')
        self.app.delete(KEY % (self.bucket, 'again'))
        self.assertEqual(self.put('again', b'2').status_int, 201)
        self.assertEqual(self.get('again').body, b'2')

    def test_missing_key_is_404_document(self):
        self.assertError(self.get('never', status=404), 404, 'not_found')

    # -- keys ------------------------------------------------------------------

    def test_keys_with_slashes_and_non_ascii_round_trip(self):
        for key in ('a/b/c', 'ключ/été', 'trailing/', 'spaces and ?&=#%', '/leading'):
            self.put(key, key.encode('utf-8'))
            self.assertEqual(self.get(key).body, key.encode('utf-8'), key)
        listed = self.app.get(KEYS % self.bucket).json['keys']
        self.assertEqual(sorted(listed, key=lambda k: k.encode('utf-8')), listed)
        self.assertIn('ключ/été', listed)

    def test_key_longer_than_key_length_is_400_and_stores_nothing(self):
        long_key = 'é' * 513  # 1026 bytes of UTF-8
        self.assertError(self.put(long_key, status=400), 400, 'bad_key')
        self.put('é' * 512)  # 1024 bytes is allowed

    def test_bad_bucket_name_is_400(self):
        response = self.app.put('/buckets/Not_Valid/keys/k', b'x', status=400)
        self.assertError(response, 400, 'bad_bucket')

    # -- limits and parameters -------------------------------------------------

    def test_value_over_max_value_bytes_is_413_and_stores_nothing(self):
        response = self.put('big', b'x' * (self.max_value_bytes + 1), status=413)
        self.assertError(response, 413, 'value_too_large')
        self.get('big', status=404)
        self.assertEqual(self.put('big', b'x' * self.max_value_bytes).status_int, 201)

    def test_quorum_overrides(self):
        self.assertEqual(len(self.put('k', params='?w=all').json['acknowledged']), 3)
        self.assertEqual(self.put('k', params='?w=quorum').status_int, 200)
        self.assertEqual(self.put('k', params='?w=one').status_int, 200)
        for r in ('1', '2', '3', 'one', 'quorum', 'all'):
            self.assertEqual(self.get('k', params='?r=' + r).body, b'value')

    def test_primary_quorums_above_r_and_w_raise_them_and_succeed_with_every_owner_up(self):
        # As Riak does: W is raised to PW (and R to PR), so a write that every
        # owner took is never answered 503 for the request's own numbers.
        for i, params in enumerate(('?w=1&pw=3', '?w=1&pw=all', '?w=2&pw=3', '?w=one&pw=2')):
            receipt = self.put('k%d' % i, b'stored', params=params)
            self.assertIn(receipt.status_int, (200, 201), receipt.text)
            self.assertGreaterEqual(receipt.json['owners_acknowledged'], int(params[-1]) if params[-1] != 'l' else 3)
            self.assertEqual(self.get('k%d' % i, params='?r=1&pr=3').body, b'stored')
        # A bucket's own primary quorums, above the configured W and R (2).
        self.app.put('/buckets/' + self.bucket, json.dumps({'pw': 3, 'pr': 3}),
                     headers={'Content-Type': 'application/json'})
        for i in range(5):
            self.assertEqual(self.put('b%d' % i, b'stored', params='?w=1').json['owners_acknowledged'], 3)
            self.assertEqual(self.get('b%d' % i, params='?r=1').body, b'stored')

    def test_quorum_out_of_range_is_400_and_changes_nothing(self):
        self.put('k', b'kept')
        for params in ('?w=0', '?w=4', '?w=most', '?w=-1'):
            self.assertError(self.put('k', b'lost', params=params, status=400), 400, 'bad_parameter')
        self.assertError(self.get('k', params='?r=9', status=400), 400, 'bad_parameter')
        self.assertEqual(self.get('k').body, b'kept')

    def test_write_all_reaches_every_replica_in_the_preference_list(self):
        receipt = self.put('k', b'everywhere', params='?w=all').json
        for name, engine in self.store.engines.items():
            held = engine.read(self.bucket, 'k')
            if name in receipt['preference_list']:
                self.assertEqual([v.value for v in held], [b'everywhere'], name)
            else:
                self.assertEqual(held, [], name)


class TestApiOnSQLite(support.OnSQLite, ValueSpecification, unittest.TestCase):
    def test_cluster_reports_health_keys_per_partition_and_rebalance(self):
        directory = support.TemporaryDirectory()
        store = support.open_store(support.sqlite_partitions(directory.path))
        app = support.web_app(store)
        try:
            for i in range(20):
                app.put(KEY % ('b', 'k%d' % i) + '?w=all', b'v', headers={'Content-Type': 'text/plain'})
            doc = app.get('/cluster').json
            self.assertEqual([p['state'] for p in doc['partitions']], ['up'] * 4)
            self.assertEqual(sum(p['keys'] for p in doc['partitions']), 20 * 3)
            self.assertIn('state', doc['rebalance'])
        finally:
            store.close()
            directory.remove()


class TestApiOnMariaDB(support.OnMariaDB, ValueSpecification, unittest.TestCase):
    def test_placement_moves_about_a_fifth_of_replicas_when_a_fifth_partition_is_added(self):
        keys = ['key-%d' % i for i in range(300)]
        for key in keys:
            self.put(key, key.encode(), params='?w=all')
        five = dict(self.partitions)
        five['p5'] = dict(five['p1'], database='kv_fifth_' + support.unique('x').replace('-', '_'))
        bigger = support.open_store(five)
        try:
            before = {k: set(self.store.ring.preference_list(self.bucket, k, 3)) for k in keys}
            after = {k: set(bigger.ring.preference_list(self.bucket, k, 3)) for k in keys}
            moved = sum(len(after[k] - before[k]) for k in keys) / (3 * len(keys))
            self.assertLessEqual(moved, 0.30)
            self.assertGreater(moved, 0.05)
            # A key that kept two of its three replicas is read through the new ring as before.
            kept = [k for k in keys if len(after[k] & before[k]) >= 2]
            self.assertGreater(len(kept), len(keys) / 2)
            for key in kept:
                self.assertEqual(bigger.get(self.bucket, key).current[0].value, key.encode())
        finally:
            bigger.close()

    def test_database_errors_do_not_leak_to_clients(self):
        broken = {name: dict(fields, user='nobody', password='s3cret-pass')
                  for name, fields in self.partitions.items()}
        store = support.open_store(broken)
        app = support.web_app(store)
        try:
            response = app.put(KEY % (self.bucket, 'k'), b'x', headers={'Content-Type': 'text/plain'},
                               status=503)
            self.assertError(response, 503, 'unavailable')
            self.assertEqual(sorted(response.json['failed']),
                             sorted(store.ring.preference_list(self.bucket, 'k', 3)))
            self.assertEqual(response.headers['Retry-After'], '1')
            for secret in ('s3cret-pass', 'nobody', 'Traceback', '/tmp/', str(self.partitions['p1']['port'])):
                self.assertNotIn(secret, response.text)
        finally:
            store.close()


class TestQueryStrings(unittest.TestCase):
    def test_a_query_string_is_read_as_parse_qsl_reads_utf8(self):
        """WSGI gives the query string's bytes as Latin-1 text: read as
        parse_qsl reads UTF-8, with bytes that are not UTF-8 refused."""
        rng = random.Random(20261121)
        for _ in range(20000):
            raw = ''.join(rng.choice('ab=&;%+\xc3\xa91 .') for _ in range(rng.randrange(12)))
            pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, encoding='latin-1')
            try:
                expected = {n.encode('latin-1').decode('utf-8'): v.encode('latin-1').decode('utf-8')
                            for n, v in pairs}
            except UnicodeDecodeError:
                with self.assertRaises(BadRequest, msg=raw):
                    parse_query(raw)
            else:
                self.assertEqual(parse_query(raw), expected, raw)
