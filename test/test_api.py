"""The HTTP API, as a specification, run against SQLite and real MariaDB partitions.

Each test uses a bucket of its own, so the tests share one store per class.
"""
import base64
import dataclasses
import datetime
import email.utils
import hashlib
import json
import random
import threading
import time
import unittest
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

from kvstore.errors import BadRequest
from kvstore.http.negotiation import DOCUMENT_TYPES
from kvstore.http.request import parse_query
from test import support

KEYS = '/buckets/%s/keys'
KEY = '/buckets/%s/keys/%s'


def q(key):
    return urllib.parse.quote(key, safe='')


class ApiSpecification(support.StoreSpecification):
    """Mixed into a TestCase whose make_partitions() gives the partitions."""
    max_value_bytes = 64 * 1024
    store_settings = {'max_value_bytes': max_value_bytes}

    def put(self, key, body=b'value', content_type='text/plain', status=None, headers=None, params=''):
        h = {'Content-Type': content_type}
        h.update(headers or {})
        return self.app.put(KEY % (self.bucket, q(key)) + params, body, headers=h, status=status)

    def get(self, key, status=None, headers=None, params=''):
        return self.app.get(KEY % (self.bucket, q(key)) + params, headers=headers or {}, status=status)

    def assertError(self, response, status, code):
        self.assertEqual(response.status_int, status)
        doc = response.json
        self.assertEqual(doc['code'], code)
        self.assertEqual(doc['status'], status)
        self.assertTrue(doc['message'])
        self.assertNotIn('Traceback', response.text)

    # -- create, read, replace, delete ------------------------------------------

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

    # -- keys --------------------------------------------------------------------

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

    # -- content negotiation ------------------------------------------------------

    def test_value_is_returned_raw_when_accept_admits_its_type(self):
        self.put('t', b'text', content_type='text/plain')
        for accept in ('text/plain', 'text/*', '*/*', 'application/json;q=0.9, text/plain'):
            got = self.get('t', headers={'Accept': accept})
            self.assertEqual(got.body, b'text', accept)

    def test_value_is_a_record_document_when_only_documents_are_acceptable(self):
        self.put('t', b'text', content_type='text/csv')
        doc = self.get('t', headers={'Accept': 'application/json'}).json
        self.assertEqual((doc['key'], doc['value'], doc['content_type']), ('t', 'text', 'text/csv'))
        self.put('b', b'\xff\x00', content_type='application/x-bin')
        doc = self.get('b', headers={'Accept': 'application/json'}).json
        self.assertEqual(base64.b64decode(doc['value_base64']), b'\xff\x00')
        xml = self.get('b', headers={'Accept': 'application/xml'})
        self.assertEqual(ET.fromstring(xml.body).find('key').text, 'b')

    def test_value_unacceptable_in_every_form_is_406(self):
        self.put('t', b'text', content_type='text/csv')
        self.assertError(self.get('t', headers={'Accept': 'image/png'}, status=406), 406, 'not_acceptable')

    def test_documents_come_in_json_xml_html_and_text(self):
        self.put('k', b'v')
        url = KEYS % self.bucket
        self.assertEqual(self.app.get(url).json['keys'], ['k'])  # JSON by default
        as_json = self.app.get(url, headers={'Accept': 'application/json'})
        self.assertTrue(as_json.headers['Content-Type'].startswith('application/json'))
        as_xml = self.app.get(url, headers={'Accept': 'application/xml'})
        self.assertIn('xml', as_xml.headers['Content-Type'])
        self.assertEqual([i.text for i in ET.fromstring(as_xml.body).find('keys')], ['k'])
        as_html = self.app.get(url, headers={'Accept': 'text/html'})
        self.assertTrue(as_html.headers['Content-Type'].startswith('text/html'))
        self.assertIn('<li>k</li>', as_html.text)
        as_text = self.app.get(url, headers={'Accept': 'text/plain'})
        self.assertTrue(as_text.headers['Content-Type'].startswith('text/plain'))
        self.assertIn('- k', as_text.text)
        self.assertIn('Accept', as_json.headers['Vary'])

    def test_head_of_a_document_has_its_length_and_no_body(self):
        get = self.app.get('/buckets')
        head = self.app.head('/buckets')
        self.assertEqual(head.body, b'')
        self.assertEqual(head.headers['Content-Length'], str(len(get.body)))

    def test_an_accept_header_that_cannot_be_parsed_is_400(self):
        self.assertError(self.app.get('/buckets', headers={'Accept': 'not a media type'}, status=400),
                         400, 'bad_header')

    def test_errors_in_xml_carry_the_type_asked_for(self):
        response = self.get('never', status=404, headers={'Accept': 'application/xml'})
        self.assertTrue(response.headers['Content-Type'].startswith('application/xml'))

    def test_a_value_406_reveals_nothing_of_the_value(self):
        self.put('t', b'text', content_type='text/csv')
        response = self.get('t', headers={'Accept': 'image/png'}, status=406)
        for header in ('ETag', 'X-Context', 'Last-Modified'):
            self.assertNotIn(header, response.headers)

    def test_documents_unacceptable_is_406_document(self):
        self.assertError(self.app.get('/buckets', headers={'Accept': 'image/png'}, status=406),
                         406, 'not_acceptable')

    def test_a_record_document_says_vary_once(self):
        self.put('t', b'text', content_type='text/csv')
        response = self.get('t', headers={'Accept': 'application/json'})
        self.assertEqual([v for k, v in response.headerlist if k == 'Vary'], ['Accept'])

    def test_errors_are_negotiated_too(self):
        response = self.get('never', status=404, headers={'Accept': 'application/xml'})
        self.assertEqual(ET.fromstring(response.body).find('code').text, 'not_found')
        response = self.get('never', status=404, headers={'Accept': 'text/html'})
        self.assertIn('not_found', response.text)

    def test_index_lists_the_api(self):
        doc = self.app.get('/').json
        paths = {e['path'] for e in doc['endpoints']}
        self.assertIn('/buckets/{bucket}/keys/{key}', paths)

    def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(self):
        self.assertError(self.app.get('/nowhere', status=404), 404, 'not_found')
        response = self.app.request('/buckets', method='DELETE', status=405)
        self.assertError(response, 405, 'method_not_allowed')
        self.assertEqual(response.headers['Allow'], 'GET, HEAD')

    # -- limits and parameters ------------------------------------------------------

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

    # -- versions and context -----------------------------------------------------

    def test_write_with_context_supersedes_it(self):
        first = self.put('c', b'1')
        second = self.put('c', b'2', headers={'X-Context': first.headers['X-Context']})
        self.assertEqual(second.status_int, 200)
        self.assertEqual(self.get('c').body, b'2')

    def test_concurrent_writes_with_one_context_become_siblings_until_resolved(self):
        context = self.put('s', b'base').headers['X-Context']
        self.put('s', b'left', headers={'X-Context': context})
        self.put('s', b'right', headers={'X-Context': context})
        choices = self.get('s', status=300)
        values = sorted(s['value'] for s in choices.json['siblings'])
        self.assertEqual(values, ['left', 'right'])
        self.put('s', b'merged', headers={'X-Context': choices.headers['X-Context']})
        self.assertEqual(self.get('s').body, b'merged')

    def test_write_without_context_supersedes_what_the_coordinator_holds(self):
        context = self.put('n', b'base').headers['X-Context']
        self.put('n', b'left', headers={'X-Context': context})
        self.put('n', b'right', headers={'X-Context': context})
        self.put('n', b'blind')
        self.assertEqual(self.get('n').body, b'blind')

    def test_a_write_that_leaves_siblings_hands_out_no_context(self):
        context = self.put('s', b'base').headers['X-Context']
        self.put('s', b'left', headers={'X-Context': context})
        right = self.put('s', b'right', headers={'X-Context': context})
        self.assertNotIn('X-Context', right.headers)
        self.assertIsNone(right.json['context'])
        self.assertEqual(right.json['siblings'], 2)
        # So the writer must read the siblings before it can replace them.
        self.assertEqual(len(self.get('s', status=300).json['siblings']), 2)

    def test_bad_context_is_400(self):
        self.assertError(self.put('k', headers={'X-Context': '!!notbase64'}, status=400), 400, 'bad_context')
        garbage = base64.urlsafe_b64encode(b'[1, 2]').decode()
        self.assertError(self.put('k', headers={'X-Context': garbage}, status=400), 400, 'bad_context')
        self.get('k', status=404)

    def test_a_context_copied_from_another_key_is_400_and_replaces_nothing(self):
        coordinator = self.store.ring.preference_list(self.bucket, 'b', 3)[0]
        other = next(k for k in ('a%d' % i for i in range(200))
                     if self.store.ring.preference_list(self.bucket, k, 3)[0] == coordinator)
        self.put('b', b'newer')
        # Written later by the same coordinator, the other key's context covers b's version.
        copied = self.put(other, b'x').headers['X-Context']
        for response in (self.put('b', b'stale', headers={'X-Context': copied}, status=400),
                         self.app.delete(KEY % (self.bucket, 'b'), headers={'X-Context': copied}, status=400)):
            self.assertError(response, 400, 'bad_context')
            self.assertIn('another key', response.json['message'])
        self.assertEqual(self.get('b').body, b'newer')
        # Its own key's context is taken.
        own = self.get('b').headers['X-Context']
        self.assertEqual(self.put('b', b'newest', headers={'X-Context': own}).status_int, 200)

    # -- conditional requests --------------------------------------------------------

    def test_if_none_match_star_creates_only(self):
        self.assertEqual(self.put('c', b'1', headers={'If-None-Match': '*'}).status_int, 201)
        self.assertError(self.put('c', b'2', headers={'If-None-Match': '*'}, status=412),
                         412, 'precondition_failed')
        self.assertEqual(self.get('c').body, b'1')

    def test_if_match_is_compare_and_swap(self):
        etag = self.put('c', b'1').headers['ETag']
        self.assertEqual(self.put('c', b'2', headers={'If-Match': etag}).status_int, 200)
        self.assertError(self.put('c', b'3', headers={'If-Match': etag}, status=412), 412, 'precondition_failed')
        self.assertEqual(self.get('c').body, b'2')
        self.assertError(self.put('absent', b'x', headers={'If-Match': '*'}, status=412),
                         412, 'precondition_failed')
        self.assertError(self.app.delete(KEY % (self.bucket, 'c'), headers={'If-Match': etag}, status=412),
                         412, 'precondition_failed')
        self.assertEqual(self.get('c').body, b'2')

    def test_compare_and_swap_lets_exactly_one_of_many_racers_win(self):
        etag = self.put('race', b'start').headers['ETag']
        outcomes = []

        def racer(i):
            response = self.put('race', b'racer %d' % i, headers={'If-Match': etag}, status='*')
            outcomes.append(response.status_int)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(outcomes), [200] + [412] * 7)
        self.assertTrue(self.get('race').body.startswith(b'racer '))

    def test_a_write_with_content_range_is_400_and_stores_nothing(self):
        self.put('whole', b'0123456789')
        partial = {'Content-Range': 'bytes 0-3/10'}
        self.assertError(self.put('whole', b'abcd', headers=partial, status=400), 400, 'bad_header')
        self.assertEqual(self.get('whole').body, b'0123456789')
        self.assertError(self.put('fresh', b'abcd', headers=partial, status=400), 400, 'bad_header')
        self.get('fresh', status=404)
        refused = self.app.put('/buckets/%s-props' % self.bucket, b'{}', headers=partial, status=400)
        self.assertError(refused, 400, 'bad_header')
        self.app.get('/buckets/%s-props' % self.bucket, status=404)

    def test_bucket_writes_honour_if_match_and_if_none_match_on_its_etag(self):
        url = '/buckets/%s-cond' % self.bucket
        self.app.put(url, headers={'If-Match': '*'}, status=412)   # no bucket yet
        self.app.get(url, status=404)
        etag = self.app.put(url, b'{"conflicts": "lww"}', status=201).headers['ETag']
        self.assertEqual(self.app.get(url).headers['ETag'], etag)
        # Create-only on an existing bucket, and a stale If-Match, change nothing.
        refused = self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-None-Match': '*'}, status=412)
        self.assertError(refused, 412, 'precondition_failed')
        self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-Match': '"nope"'}, status=412)
        self.assertEqual(self.app.get(url).json['properties']['conflicts'], 'lww')
        changed = self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-Match': etag}, status=200)
        self.assertNotEqual(changed.headers['ETag'], etag)
        self.app.delete(url, headers={'If-Match': etag}, status=412)
        self.app.delete(url, headers={'If-None-Match': '*'}, status=412)
        self.app.get(url, status=200)
        self.app.delete(url, headers={'If-Match': changed.headers['ETag']}, status=200)
        self.app.get(url, status=404)

    def test_a_bucket_read_takes_the_newest_record_its_owners_answer(self):
        """R + W > N: a read of R owners overlaps the W that took the last
        update, and takes that update even when a stale owner answers first."""
        url = '/buckets/' + self.bucket
        self.app.put(url, b'{"conflicts": "lww"}', status=201)
        first_owner = self.store.owners.bucket_owners(self.bucket)[0]
        stale = self.store.engines[first_owner].read_bucket(self.bucket)
        self.app.put(url, b'{"conflicts": "siblings"}', status=200)
        self.store.engines[first_owner].write_bucket(self.bucket, stale)   # it missed the update
        for _ in range(5):
            self.assertEqual(self.app.get(url).json['properties'], {'conflicts': 'siblings'})

    def test_a_bucket_revalidates_and_its_count_has_no_validator(self):
        """RFC 9110 8.8.3: a strong ETag changes whenever the representation
        does; the bucket document is its properties, the count is asked for."""
        url = '/buckets/%s-rev' % self.bucket
        etag = self.app.put(url, b'{"conflicts": "lww"}', status=201).headers['ETag']
        self.assertEqual(self.app.get(url, headers={'If-None-Match': etag}, status=304).body, b'')
        before = self.app.get(url)
        self.app.put(url + '/keys/k', b'v', headers={'Content-Type': 'text/plain'})
        self.assertEqual(self.app.get(url).body, before.body)
        counted = self.app.get(url + '?count=true')
        self.assertEqual(counted.json['key_count'], 1)
        self.assertNotIn('ETag', counted.headers)
        self.app.put(url, b'{"conflicts": "siblings"}', status=200)
        self.app.get(url, headers={'If-None-Match': etag}, status=200)

    def test_conditional_get(self):
        etag = self.put('g', b'v').headers['ETag']
        not_modified = self.get('g', headers={'If-None-Match': etag}, status=304)
        self.assertEqual(not_modified.body, b'')
        self.assertEqual(not_modified.headers['ETag'], etag)
        self.assertEqual(self.get('g', headers={'If-None-Match': '"other"'}).body, b'v')
        self.assertEqual(self.get('g', headers={'If-None-Match': 'W/' + etag}, status=304).status_int, 304)
        self.get('g', headers={'If-Match': '"other"'}, status=412)
        last_modified = self.get('g').headers['Last-Modified']
        self.get('g', headers={'If-Modified-Since': last_modified}, status=304)
        self.get('g', headers={'If-Modified-Since': 'Thu, 01 Jan 1970 00:00:00 GMT'}, status=200)

    def test_if_modified_since_accepts_the_rfc_850_and_asctime_date_forms(self):
        self.put('dated', b'v')
        modified = email.utils.parsedate_to_datetime(self.get('dated').headers['Last-Modified'])
        for when, status in ((modified, 304), (modified - datetime.timedelta(days=1), 200)):
            for form in ('%A, %d-%b-%y %H:%M:%S GMT', '%a %b {day} %H:%M:%S %Y'):
                header = when.strftime(form.replace('{day}', '%2d' % when.day))
                self.get('dated', headers={'If-Modified-Since': header}, status=status)
            # If-Unmodified-Since fails on a date before the last change.
            header = when.strftime('%a %b {day} %H:%M:%S %Y'.replace('{day}', '%2d' % when.day))
            self.get('dated', headers={'If-Unmodified-Since': header}, status=200 if status == 304 else 412)

    # -- one ETag per representation -------------------------------------------------

    def test_each_representation_has_its_own_etag_and_the_raw_value_its_digest(self):
        """RFC 9110 8.8.3: the raw bytes and each record about them are different
        representations; the validator of one never revalidates another."""
        self.put('r', b'some bytes', 'application/x-thing')
        etags = {accept: self.get('r', headers={'Accept': accept}).headers['ETag']
                 for accept in ['*/*'] + DOCUMENT_TYPES}
        self.assertEqual(len(set(etags.values())), len(etags), etags)
        for accept in DOCUMENT_TYPES:
            served = self.get('r', headers={'Accept': accept}).headers['Content-Type'].split(';')[0]
            self.assertTrue(etags[accept].endswith(':%s"' % served), (etags[accept], served))
        self.assertEqual(self.get('r').headers['Repr-Digest'],
                         'sha-256=:%s:' % base64.b64encode(hashlib.sha256(b'some bytes').digest()).decode())
        for accept in DOCUMENT_TYPES:
            self.get('r', headers={'Accept': accept, 'If-None-Match': etags['*/*']}, status=200)
            self.get('r', headers={'Accept': '*/*', 'If-None-Match': etags[accept]}, status=200)
            self.get('r', headers={'Accept': accept, 'If-None-Match': etags[accept]}, status=304)

    def test_rewriting_the_same_bytes_with_new_metadata_changes_every_etag(self):
        """A cache that revalidates after such a write gets the new type and metadata, not a 304."""
        raw = self.put('m', b'bytes', 'application/x-thing').headers['ETag']
        record = self.get('m', headers={'Accept': 'application/json'}).headers['ETag']
        self.assertNotEqual(self.put('m', b'bytes', 'application/x-other', headers={'X-Meta-Owner': 'b'}).headers['ETag'],
                            raw)
        self.assertEqual(self.get('m', headers={'If-None-Match': raw}).headers['Content-Type'], 'application/x-other')
        self.assertIn('meta', self.get('m', headers={'Accept': 'application/json', 'If-None-Match': record}).json)

    def test_an_if_match_never_matches_a_later_write_of_the_same_bytes(self):
        """Compare-and-swap without ABA: A, B, then A again is a new version."""
        first = self.put('aba', b'A').headers['ETag']
        self.put('aba', b'B')
        self.put('aba', b'A')
        self.put('aba', b'C', headers={'If-Match': first}, status=412)
        self.assertEqual(self.get('aba').body, b'A')

    # -- what a value keeps besides its bytes ----------------------------------------

    def test_cache_control_and_expires_go_with_records_siblings_and_304s(self):
        """RFC 9110 15.4.5: a 304 carries the Cache-Control and Expires a 200 would."""
        expires = 'Thu, 01 Jan 2037 00:00:00 GMT'
        self.put('c', b'secret', 'application/x-thing',
                 headers={'Cache-Control': 'private, no-store', 'Expires': expires})
        for accept in ['*/*'] + DOCUMENT_TYPES:
            etag = self.get('c', headers={'Accept': accept}).headers['ETag']
            for conditions, status in (({}, 200), ({'If-None-Match': etag}, 304)):
                got = self.get('c', headers=dict(conditions, Accept=accept), status=status)
                self.assertEqual((got.headers.get('Cache-Control'), got.headers.get('Expires')),
                                 ('private, no-store', expires), (accept, status))
        record = self.get('c', headers={'Accept': 'application/json'}).json
        self.assertEqual((record['cache_control'], record['expires']), ('private, no-store', expires))
        # Without its own, a value's record and 304 take the bucket's.
        self.app.put('/buckets/' + self.bucket, '{"cache_control": "max-age=5"}')
        self.put('plain', b'x', 'application/x-thing')
        etag = self.get('plain', headers={'Accept': 'application/json'}).headers['ETag']
        for conditions, status in (({}, 200), ({'If-None-Match': etag}, 304)):
            got = self.get('plain', headers=dict(conditions, Accept='application/json'), status=status)
            self.assertEqual(got.headers['Cache-Control'], 'max-age=5')
        # Siblings: every directive of each (one's no-store holds), the earliest Expires.
        context = self.put('s', b'base').headers['X-Context']
        self.put('s', b'left', headers={'X-Context': context, 'Cache-Control': 'private, no-store',
                                        'Expires': 'Fri, 01 Jan 2038 00:00:00 GMT'})
        self.put('s', b'right', headers={'X-Context': context, 'Expires': expires})
        for accept in ('application/json', 'multipart/mixed'):
            choices = self.get('s', headers={'Accept': accept}, status=300)
            self.assertEqual(sorted(choices.headers['Cache-Control'].split(', ')),
                             ['max-age=5', 'no-store', 'private'])
            self.assertEqual(choices.headers['Expires'], expires)

    def test_content_disposition_language_and_encoding_are_kept_with_the_value(self):
        """As S3 keeps them: sent back on GET and HEAD of the value, shown in its record.
        (WebTest decodes gzip and drops Content-Encoding: test_server sees it sent.)"""
        stored = {'Content-Disposition': 'attachment; filename="hello.txt"', 'Content-Language': 'en, fr'}
        self.put('z', b'hello', 'text/plain', headers=dict(stored, **{'Content-Encoding': 'identity'}))
        for method in (self.app.get, self.app.head):
            got = method(KEY % (self.bucket, 'z'))
            self.assertEqual({name: got.headers.get(name) for name in stored}, stored)
        record = self.get('z', headers={'Accept': 'application/json'}).json
        self.assertEqual((record['content_encoding'], record['content_disposition'], record['content_language']),
                         ('identity', 'attachment; filename="hello.txt"', 'en, fr'))
        # Checked like every stored header: no control characters, 4 KiB in all.
        for header in ('Content-Encoding', 'Expires') + tuple(stored):
            for value in ('a\x01b', 'x' * 5000):
                self.assertError(self.put('bad', headers={header: value}, status=400), 400, 'bad_header')
        self.get('bad', status=404)

    def test_a_form_write_answers_without_an_etag(self):
        """RFC 9110 9.3.4: the stored bytes are the form's field, not the request's."""
        written = self.app.put(KEY % (self.bucket, 'form'), {'value': 'v'})
        self.assertNotIn('ETag', written.headers)
        self.assertIn('ETag', self.put('raw').headers)

    def test_last_modified_is_never_later_than_the_date(self):
        """A version written by a front end whose clock runs an hour ahead."""
        self.put('ahead', b'v')
        written = self.store.get(self.bucket, 'ahead').current[0]
        ahead = dataclasses.replace(written, version_id=uuid.uuid4().hex,
                                    modified=written.modified + 3600 * 10 ** 6)
        for owner in self.store.placement(self.bucket, 'ahead')[0]:
            self.store.engines[owner].apply(self.bucket, 'ahead', ahead, superseded=[written.version_id])
        self.assertEqual(self.store.get(self.bucket, 'ahead').current[0].modified, ahead.modified)
        for accept in ('*/*', 'application/json'):
            got = self.get('ahead', headers={'Accept': accept})
            date = email.utils.parsedate_to_datetime(got.headers['Date'])
            self.assertLessEqual(email.utils.parsedate_to_datetime(got.headers['Last-Modified']), date)

    # -- listing ----------------------------------------------------------------------

    def test_listing_pages_through_every_key_in_byte_order_without_repeats(self):
        keys = ['p/%03d' % i for i in range(23)] + ['q/é', 'q/z', 'p/\u00ff', 'other']
        for key in keys:
            self.put(key, b'x')
        seen, url, pages = [], KEYS % self.bucket + '?prefix=p/&limit=7', 0
        while url:
            page = self.app.get(url)
            pages += 1
            seen.extend(page.json['keys'])
            cursor = page.json['next_cursor']
            url = (KEYS % self.bucket + '?' + urllib.parse.urlencode(
                {'prefix': 'p/', 'limit': 7, 'cursor': cursor})) if cursor else None
            if cursor:
                self.assertIn('rel="next"', page.headers['Link'])
        expected = sorted((k for k in keys if k.startswith('p/')), key=lambda k: k.encode('utf-8'))
        self.assertEqual(seen, expected)
        self.assertEqual(pages, 4)
        everything = self.app.get(KEYS % self.bucket + '?limit=1000').json
        self.assertEqual(everything['keys'], sorted(keys, key=lambda k: k.encode('utf-8')))
        self.assertIsNone(everything['next_cursor'])

    def test_listing_leaves_out_deleted_keys(self):
        self.put('a')
        self.put('b')
        self.app.delete(KEY % (self.bucket, 'a'))
        self.assertEqual(self.app.get(KEYS % self.bucket).json['keys'], ['b'])

    def test_keys_holding_separator_and_control_bytes_are_listed_whole(self):
        # MySQL partitions pack a listing's columns with 0x1f between them.
        keys = ['unit\x1fseparated', '\x1f', 'tab\tand\x1f\x1fmore', 'plain']
        for key in keys:
            self.put(key, b'x')
        self.app.delete(KEY % (self.bucket, urllib.parse.quote('\x1f')))
        listed = self.app.get(KEYS % self.bucket).json['keys']
        self.assertEqual(listed, sorted(set(keys) - {'\x1f'}, key=lambda k: k.encode('utf-8')))

    def test_listing_parameters_are_checked(self):
        self.put('a')
        self.assertError(self.app.get(KEYS % self.bucket + '?limit=0', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % self.bucket + '?limit=x', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % self.bucket + '?cursor=%%%%', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % support.unique(), status=404), 404, 'not_found')

    # -- buckets -------------------------------------------------------------------------

    def test_bucket_lifecycle(self):
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 201)
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 200)
        self.assertIn(self.bucket, self.app.get('/buckets').json['buckets'])
        info = self.app.get('/buckets/' + self.bucket + '?count=true').json
        self.assertEqual((info['key_count'], info['properties']['conflicts']), (0, 'siblings'))
        self.assertEqual(self.app.delete('/buckets/' + self.bucket).status_int, 200)
        self.assertError(self.app.get('/buckets/' + self.bucket, status=404), 404, 'not_found')
        self.assertError(self.app.delete('/buckets/' + self.bucket, status=404), 404, 'not_found')

    def test_writing_a_key_creates_its_bucket(self):
        self.put('k1')
        self.put('k2')
        self.assertIn(self.bucket, self.app.get('/buckets').json['buckets'])
        self.assertEqual(self.app.get('/buckets/' + self.bucket + '?count=true').json['key_count'], 2)

    def test_deleting_a_bucket_that_holds_keys_needs_force(self):
        self.put('k')
        self.assertError(self.app.delete('/buckets/' + self.bucket, status=409), 409, 'bucket_not_empty')
        self.assertEqual(self.get('k').body, b'value')
        self.assertEqual(self.app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)
        self.get('k', status=404)
        self.assertNotIn(self.bucket, self.app.get('/buckets').json['buckets'])

    def test_putting_a_bucket_again_keeps_its_properties(self):
        self.app.put('/buckets/' + self.bucket, json.dumps({'conflicts': 'lww'}))
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 200)
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')

    def test_a_refused_precondition_ends_the_probe_of_a_recovering_partition(self):
        store = support.open_store(self.partitions, backoff=0.05, max_backoff=0.05)
        app = support.web_app(store)
        try:
            key = 'probe'
            app.put(KEY % (self.bucket, key), b'v', headers={'Content-Type': 'text/plain'})
            primary = store.ring.preference_list(self.bucket, key, 3)[0]
            store.health.failed(primary, 'a test says so')
            time.sleep(0.1)  # past the backoff: the next request probes it
            app.put(KEY % (self.bucket, key), b'w', headers={'Content-Type': 'text/plain',
                                                           'If-None-Match': '*'}, status=412)
            self.assertFalse(store.health.is_down(primary))
        finally:
            store.close()

    def test_bucket_properties_are_checked_and_stored(self):
        self.app.put('/buckets/' + self.bucket, json.dumps({'conflicts': 'lww'}))
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')
        for body in ('{"conflicts": "maybe"}', '{"color": "red"}', '[1]', 'not json'):
            self.assertEqual(self.app.put('/buckets/' + self.bucket, body, status=400).status_int, 400)
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')


class TestApiOnSQLite(support.OnSQLite, ApiSpecification, unittest.TestCase):
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


class TestApiOnMariaDB(support.OnMariaDB, ApiSpecification, unittest.TestCase):
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
