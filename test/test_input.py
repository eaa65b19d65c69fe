"""Client input: whatever a client sends, a bad request is a 4xx error
document that changes nothing, never a 500, and never marks a partition down."""
import base64
import json
import unittest

import webtest

from kvstore.coordinator.versions import context_binding
from kvstore.errors import BadRequest
from test import support

KEY = '/buckets/%s/keys/%s'
DEEP = '[' * 100000 + ']' * 100000


def token(clock, bucket=None, key='k'):
    """A context for a clock of the test's choosing: bound to bucket/key as the
    store binds those it issues, or (no bucket) a plain clock, the form
    contexts had before they were bound."""
    document = clock if bucket is None else {'c': clock, 'k': context_binding(bucket, key)}
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip('=')


class InputSpecification(support.StoreSpecification):
    """Mixed into a TestCase whose make_partitions() gives the partitions."""

    def put(self, key, headers=None, status=None, body=b'value'):
        h = {'Content-Type': 'text/plain'}
        h.update(headers or {})
        return self.app.put(KEY % (self.bucket, key), body, headers=h, status=status)

    def assertError(self, response, status, code):
        self.assertEqual(response.status_int, status, response.text)
        doc = response.json
        self.assertEqual((doc['code'], doc['status']), (code, status))
        self.assertTrue(doc['message'])

    def assertNothingStored(self, key='k'):
        self.app.get(KEY % (self.bucket, key), status=404)

    def assertPartitionsUp(self):
        self.assertEqual({p: s['state'] for p, s in self.store.health.view().items()},
                         {p: 'up' for p in self.partitions})


class QueryAndPathSpecification(InputSpecification):
    def test_limit_of_non_ascii_digits_or_thousands_of_digits_is_400(self):
        for limit in ('²', '①', '١٠', '1' * 5000, '0', '10001'):
            response = self.app.get('/buckets/%s/keys' % self.bucket, {'limit': limit}, status=400)
            self.assertError(response, 400, 'bad_parameter')
            self.assertEqual(response.json['parameter'], 'limit')

    def test_r_and_w_of_non_ascii_digits_are_400(self):
        self.put('k')
        self.assertError(self.app.get(KEY % (self.bucket, 'k') + '?r=%D9%A1', status=400), 400, 'bad_parameter')
        self.assertError(self.app.put(KEY % (self.bucket, 'n') + '?w=%C2%B2', b'v', status=400),
                         400, 'bad_parameter')
        self.assertNothingStored('n')

    def test_a_key_or_bucket_whose_escapes_are_not_utf8_is_400_and_stores_nothing(self):
        for escaped in ('%FF', 'a%C3', '%C3%28', '%ED%A0%80'):
            self.assertError(self.app.put(KEY % (self.bucket, escaped), b'v', status=400), 400, 'bad_key')
            self.assertError(self.app.get(KEY % (self.bucket, escaped), status=400), 400, 'bad_key')
            self.assertError(self.app.delete(KEY % (self.bucket, escaped), status=400), 400, 'bad_key')
        self.assertEqual(self.app.get('/buckets/%s/keys' % self.bucket, status=404).json['code'], 'not_found')
        # The UTF-8 of ÿ is a key like any other.
        self.put('%C3%BF')
        self.assertEqual(self.app.get('/buckets/%s/keys' % self.bucket).json['keys'], ['\xff'])
        for path in ('/buckets/%FF', '/buckets/%FF/keys', '/buckets/%FF/keys/k'):
            self.assertError(self.app.get(path, status=400), 400, 'bad_bucket')
        self.assertError(self.app.get('/%FF', status=404), 404, 'not_found')

    def test_prefix_and_cursor_whose_escapes_are_not_utf8_are_400(self):
        self.put('%C3%BF')
        listing = '/buckets/%s/keys' % self.bucket
        for query, parameter in (('prefix=%FF', 'prefix'), ('cursor=%FF', 'cursor'), ('limit=1&prefix=a%C3', 'prefix')):
            response = self.app.get(listing + '?' + query, status=400)
            self.assertError(response, 400, 'bad_parameter')
            self.assertEqual(response.json['parameter'], parameter)
        self.assertEqual(self.app.get(listing + '?prefix=%C3%BF').json['keys'], ['\xff'])
        # Unescaped bytes too (WSGI gives them as Latin-1 text): UTF-8 is read as such, others refused.
        self.assertEqual(self.get_raw_query(listing, 'prefix=' + '\xff'.encode().decode('latin-1')).json['keys'],
                         ['\xff'])
        self.assertError(self.get_raw_query(listing, 'prefix=\xff', status=400), 400, 'bad_parameter')

    def get_raw_query(self, path, query, status=None):
        request = webtest.TestRequest.blank(path)
        request.environ['QUERY_STRING'] = query
        return self.app.do_request(request, status=status)


class JsonSpecification(InputSpecification):
    def test_deeply_nested_json_in_a_bucket_body_is_400_bad_body(self):
        response = self.app.put('/buckets/' + self.bucket, DEEP, status=400)
        self.assertError(response, 400, 'bad_body')
        self.app.get('/buckets/' + self.bucket, status=404)



class ContextSpecification(InputSpecification):
    def test_a_deeply_nested_context_is_400_bad_context(self):
        self.assertError(self.put('k', {'X-Context': base64.urlsafe_b64encode(b'[' * 2000).decode()}, status=400),
                         400, 'bad_context')
        self.assertNothingStored()

    def test_a_context_naming_partitions_not_configured_is_400_and_stores_nothing(self):
        for clock in ({'nowhere': 1}, {'p1': 1, 'p99': 2}, {'': 1}, {'.p1': 1}, {'p1x.1': 3}, {'p2.3f9a': 1}):
            self.assertError(self.put('k', {'X-Context': token(clock, self.bucket)}, status=400), 400, 'bad_context')
        self.assertNothingStored()
        # Configured partitions, bare or with an incarnation, are taken.
        written = self.put('k', {'X-Context': token({'p1': 4, 'p2.3f9a0c2d41b7': 1}, self.bucket)})
        self.assertEqual(written.status_int, 201)
        self.assertGreaterEqual(written.json['clock']['p1'], 4)
        self.assertEqual(written.json['clock']['p2.3f9a0c2d41b7'], 1)

    def test_a_context_with_hundreds_of_actors_or_kilobytes_is_400_and_stores_nothing(self):
        many = {'p1.%012x' % i: 1 for i in range(256)}
        self.assertError(self.put('k', {'X-Context': token(many, self.bucket)}, status=400), 400, 'bad_context')
        long_names = {'p1.' + 'x' * 2000: 1, 'p2.' + 'y' * 2000: 1}
        self.assertError(self.put('k', {'X-Context': token(long_names, self.bucket)}, status=400), 400,
                         'bad_context')
        self.assertError(self.put('k', {'X-Context': token({'p1': 10 ** 30}, self.bucket)}, status=400), 400,
                         'bad_context')
        self.assertNothingStored()
        # A later write without a context leaves nothing of them behind.
        written = self.put('k')
        self.assertLess(len(written.headers['X-Context']), 100)


    def test_forged_actors_cannot_poison_a_key(self):
        # Two writes whose contexts name forged actors of about 2,900 characters.
        for actor in ('p1.' + 'a' * 2900, 'p2.' + 'b' * 2900):
            self.assertError(self.put('k', {'X-Context': token({actor: 1}, self.bucket)}, status=400), 400,
                             'bad_context')
        self.assertNothingStored()
        # A key such writes poisoned before they were refused (siblings whose
        # clocks name them) is resolved by a read and a write of its context.
        for actor in ('p1.' + 'a' * 2900, 'p2.' + 'b' * 2900):
            self.store.put(self.bucket, 'k', b'v', 'text/plain', context={actor: 1})
        siblings = self.app.get(KEY % (self.bucket, 'k'), status=300)
        self.assertLess(len(siblings.headers['X-Context']), 200)
        resolved = self.put('k', {'X-Context': siblings.headers['X-Context']})
        self.assertEqual(resolved.status_int, 200, resolved.text)
        self.assertLess(len(self.app.get(KEY % (self.bucket, 'k')).headers['X-Context']), 200)

    def test_a_context_bound_to_no_key_or_from_the_future_is_400_and_replaces_nothing(self):
        def clock_of(response):
            context = response.headers['X-Context']
            return json.loads(base64.urlsafe_b64decode(context + '=' * (-len(context) % 4)))['c']
        first = self.put('k', body=b'zero').headers['X-Context']
        for body in (b'one', b'two'):   # the same context: siblings
            self.put('k', {'X-Context': first}, body=body)
        siblings = self.app.get(KEY % (self.bucket, 'k'), status=300)
        self.assertEqual(len(siblings.json['siblings']), 2)
        # Another key written later through k's coordinator: its clock covers k's versions.
        coordinator = self.store.ring.preference_list(self.bucket, 'k', 3)[0]
        other = next(k for k in ('a%d' % i for i in range(200))
                     if self.store.ring.preference_list(self.bucket, k, 3)[0] == coordinator)
        plain = token(clock_of(self.put(other)))
        ahead = {actor: count + 3600 * 10 ** 6 for actor, count in clock_of(siblings).items()}
        for context in (plain, token(ahead, self.bucket)):
            self.assertError(self.put('k', {'X-Context': context}, body=b'erased?', status=400), 400, 'bad_context')
        self.assertEqual(len(self.app.get(KEY % (self.bucket, 'k'), status=300).json['siblings']), 2)


class HeaderSpecification(InputSpecification):
    def test_control_characters_in_meta_or_cache_control_are_400_bad_header(self):
        for headers in ({'X-Meta-Color': 'red\x01'}, {'X-Meta-Color': 'a\x7f'}, {'X-Meta-Color': 'a\tb'},
                        {'Cache-Control': 'max-age=1\x1b[31m'}, {'X-Meta-A': 'ok', 'X-Meta-B': '\x00'}):
            response = self.put('k', headers, status=400)
            self.assertError(response, 400, 'bad_header')
        self.assertNothingStored()
        # Latin-1 (obs-text) is no control character: kept and sent back.
        self.put('k', {'X-Meta-Note': 'a b \xe9'})
        self.assertEqual(self.app.get(KEY % (self.bucket, 'k')).headers['X-Meta-Note'], 'a b \xe9')

    def test_a_meta_header_without_a_name_is_400_bad_header(self):
        self.assertError(self.put('k', {'X-Meta-': 'v'}, status=400), 400, 'bad_header')
        self.assertNothingStored()

    def test_a_content_type_longer_than_its_column_is_400_bad_header(self):
        content_type = 'text/plain; name=' + 'x' * 240
        response = self.put('k', {'Content-Type': content_type}, status=400)
        self.assertError(response, 400, 'bad_header')
        self.assertIn('255', response.json['message'])
        self.assertNothingStored()
        self.put('k', {'Content-Type': content_type[:255]})
        self.assertEqual(self.app.get(KEY % (self.bucket, 'k')).headers['Content-Type'], content_type[:255])
        self.assertPartitionsUp()

    def test_a_bucket_cache_control_must_be_a_header_value(self):
        for value in ('max-age=60\n', 'caf\u00e9', '\u20ac'):
            self.assertError(self.app.put('/buckets/' + self.bucket, json.dumps({'cache_control': value}),
                                          status=400), 400, 'bad_property')


class TestQueryAndPathOnSQLite(support.OnSQLite, QueryAndPathSpecification, unittest.TestCase):
    pass


class TestJsonOnSQLite(support.OnSQLite, JsonSpecification, unittest.TestCase):
    pass


class TestContextOnSQLite(support.OnSQLite, ContextSpecification, unittest.TestCase):
    pass


class TestContextOnMariaDB(support.OnMariaDB, ContextSpecification, unittest.TestCase):
    pass


class TestSignedContextsOnSQLite(support.OnSQLite, InputSpecification, unittest.TestCase):
    """With [cluster] secret, a context carries the store's signature: no
    actor, counter or binding of it can be made up."""
    store_sections = {'cluster': {'secret': 'a-cluster-secret-for-the-tests-only-0123456789'}}

    def test_only_a_context_the_store_signed_is_taken(self):
        first = self.put('k', body=b'zero')
        issued = first.headers['X-Context']
        document = json.loads(base64.urlsafe_b64decode(issued + '=' * (-len(issued) % 4)))
        self.assertEqual(set(document), {'c', 'k', 's'})
        actor = next(iter(document['c']))
        for forged in ({'c': {actor: 1, 'p2.3f9a0c2d41b7': 1}, 'k': document['k'], 's': document['s']},
                       {'c': document['c'], 'k': document['k']},
                       {'c': document['c'], 'k': document['k'], 's': '0' * 32}):
            self.assertError(self.put('k', {'X-Context': token(forged)}, body=b'forged', status=400), 400,
                             'bad_context')
        for body in (b'one', b'two'):   # the same context: siblings
            self.assertEqual(self.put('k', {'X-Context': issued}, body=body).status_int, 200)
        siblings = self.app.get(KEY % (self.bucket, 'k'), status=300)
        self.assertEqual(self.put('k', {'X-Context': siblings.headers['X-Context']}, body=b'resolved').status_int,
                         200)
        self.assertEqual(self.app.get(KEY % (self.bucket, 'k')).body, b'resolved')


class TestHeadersOnSQLite(support.OnSQLite, HeaderSpecification, unittest.TestCase):
    pass


class TestHeadersOnMariaDB(support.OnMariaDB, HeaderSpecification, unittest.TestCase):
    pass


class TestDataErrorsOnMariaDB(support.OnMariaDB, InputSpecification, unittest.TestCase):
    """Data the schema cannot hold, past the controller's checks: the request
    is refused (bad_data) and the partitions stay up."""

    def test_data_too_long_for_a_column_is_bad_data_and_marks_no_partition_down(self):
        for attempt in range(3):
            with self.assertRaises(BadRequest) as refused:
                self.store.put(self.bucket, 'k', b'v', 'text/plain; x=' + 'y' * 300)
            self.assertEqual(refused.exception.code, 'bad_data')
            with self.assertRaises(BadRequest):
                self.store.put(self.bucket, 'k', b'v', 'text/plain', metadata={'meta': {'m': 'z' * 9000}})
        self.assertPartitionsUp()
        self.assertNothingStored()
        for i in range(10):
            self.assertEqual(self.put('ok%d' % i).status_int, 201)
            self.assertEqual(self.app.get(KEY % (self.bucket, 'ok%d' % i)).body, b'value')
        self.assertPartitionsUp()

    def test_a_forged_context_too_long_for_its_column_is_bad_data(self):
        # Eight actors: more would be pruned to the store's bound before the write.
        seen = {'p1.%d.' % i + 'x' * 600: 1 for i in range(8)}
        with self.assertRaises(BadRequest) as refused:
            self.store.put(self.bucket, 'k', b'v', 'text/plain', context=seen)
        self.assertEqual(refused.exception.code, 'bad_data')
        self.assertPartitionsUp()
        self.assertEqual(self.put('k').status_int, 201)
