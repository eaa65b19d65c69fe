"""What the HTTP API keeps with a value besides its bytes (Cache-Control, Expires,
Content-Disposition, ...), against SQLite and real MariaDB partitions.
"""
import dataclasses
import email.utils
import unittest
import uuid

from kvstore.http.negotiation import DOCUMENT_TYPES
from test import support
from test.api_base import KEY, ApiSpecification


class MetadataSpecification(ApiSpecification):
    """A value's stored headers and dates."""

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


class TestApiMetadataOnSQLite(support.OnSQLite, MetadataSpecification, unittest.TestCase):
    pass


class TestApiMetadataOnMariaDB(support.OnMariaDB, MetadataSpecification, unittest.TestCase):
    pass
