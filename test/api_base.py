"""What the specifications of the HTTP API share (test_api*.py): the URLs, the
requests and the check of an error document.  Each specification is a mixin run
against SQLite and real MariaDB partitions, one store per class; each test uses
a bucket of its own, so the tests of a class share its store.
"""
import urllib.parse

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
