"""The HTTP API's versions, against SQLite and real MariaDB partitions: contexts and
siblings, conditional requests on values (compare-and-swap), one ETag per
representation.
"""
import base64
import datetime
import email.utils
import hashlib
import threading
import time
import unittest

from kvstore.http.negotiation import DOCUMENT_TYPES
from test import support
from test.api_base import KEY, ApiSpecification


class VersionSpecification(ApiSpecification):
    """Contexts, siblings, preconditions and validators of values."""

    # -- versions and context --------------------------------------------------

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

    # -- conditional requests --------------------------------------------------

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

    # -- one ETag per representation -------------------------------------------

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


class TestApiVersionsOnSQLite(support.OnSQLite, VersionSpecification, unittest.TestCase):
    pass


class TestApiVersionsOnMariaDB(support.OnMariaDB, VersionSpecification, unittest.TestCase):
    pass
