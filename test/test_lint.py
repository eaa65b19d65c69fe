"""HTTP lint: REDbot on every kind of resource under every Accept type, against
the real server.  Nothing it rates BAD, and only the warnings docs/API.md
defends (section "What an HTTP linter says")."""
import concurrent.futures
import gzip
import json
import os
import subprocess
import sys
import unittest

import requests

from test.server import StoreServer

HERE = os.path.dirname(os.path.abspath(__file__))
CHUNK = 4096
CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
chunk_size = %d
""" % CHUNK + ''.join('\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))
GZIPPED = gzip.compress(b'a value stored gzip-encoded, served in ranges of its encoded bytes\n' * 20)
# Requests with a Range header (path, Accept, Range), linted too: several ranges
# of a value stored gzip-encoded, and of a chunked one: 206 multipart/byteranges.
RANGED = [('/buckets/lint/keys/gzipped', '*/*', 'bytes=0-9,40-49'),
          ('/buckets/lint/keys/gzipped', 'text/plain', 'bytes=0-9,40-49'),
          ('/buckets/lint/keys/chunked', '*/*', 'bytes=0-9,-5')]
ACCEPT = ['*/*', 'application/json', 'application/xml', 'text/html', 'text/plain']
# Each one is explained in docs/API.md.
DEFENDED_BAD = {
    # on a multipart/byteranges: RFC 9110 15.3.7.2 forbids a Content-Range beside the parts' own
    'PARTIAL_WITHOUT_RANGE',
}
DEFENDED_WARNINGS = {
    'FRESHNESS_HEURISTIC',   # Last-Modified without Cache-Control: set cache_control to decide
    'RANGE_CL_FULL',         # a range covering a short value whole is still answered 206
}


def lint(url, accept, range_header=None):
    """REDbot's verdict on one URL: {'status': int, 'notes': [...]}."""
    out = subprocess.run([sys.executable, os.path.join(HERE, 'redbot_lint.py'), url, accept]
                         + ([range_header] if range_header else []),
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise AssertionError('REDbot failed on %s (%s): %s' % (url, accept, out.stderr[-2000:]))
    return json.loads(out.stdout)


class TestHttpLint(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer.running(CONFIGURATION, workers=2, threads=8)
        url = cls.url = 'http://127.0.0.1:%d' % cls.server.port
        text = {'Content-Type': 'text/plain'}
        requests.put(url + '/buckets/lint', data=b'{}', timeout=10)
        requests.put(url + '/buckets/lint/keys/small', data=b'hello', headers=text, timeout=10)
        requests.put(url + '/buckets/lint/keys/other', data=b'other', headers=text, timeout=10)
        requests.put(url + '/buckets/lint/keys/chunked', data=os.urandom(3 * CHUNK + 5),
                     headers={'Content-Type': 'application/octet-stream'}, timeout=10)
        context = requests.put(url + '/buckets/lint/keys/siblings', data=b'base', headers=text,
                               timeout=10).headers['X-Context']
        for value in (b'left', b'right'):
            requests.put(url + '/buckets/lint/keys/siblings', data=value,
                         headers=dict(text, **{'X-Context': context}), timeout=10)
        requests.put(url + '/buckets/lint/keys/deleted', data=b'x', headers=text, timeout=10)
        requests.put(url + '/buckets/lint/keys/gzipped', data=GZIPPED,
                     headers={'Content-Type': 'text/plain', 'Content-Encoding': 'gzip'}, timeout=10)
        requests.delete(url + '/buckets/lint/keys/deleted', timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def test_every_resource_under_every_accept_type(self):
        resources = {
            '/': 200, '/buckets': 200, '/buckets/lint': 200, '/buckets/lint?count=true': 200,
            '/buckets/lint/keys?limit=2': 200, '/buckets/lint/keys/small': 200,
            '/buckets/lint/keys/chunked': 200, '/buckets/lint/keys/siblings': 300,
            '/buckets/lint/keys/deleted': 404, '/buckets/lint/keys/missing': 404,
            '/cluster': 200, '/health': 200, '/ready': 200,
        }
        cases = [(path, accept, None) for path in resources for accept in ACCEPT]
        cases += RANGED
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            verdicts = dict(zip(cases, pool.map(lambda case: lint(self.url + case[0], *case[1:]), cases)))
        findings = []
        for (path, accept, ranged), verdict in sorted(verdicts.items(), key=str):
            expected = 206 if ranged else resources[path]
            if ranged:
                accept += ', Range: ' + ranged
            if verdict['status'] != expected:
                findings.append('%s (%s): status %s' % (path, accept, verdict['status']))
            for note in verdict['notes']:
                defended = DEFENDED_BAD if ranged else set()   # ranged: the multipart answers
                if ((note['level'] == 'BAD' and note['note_id'] not in defended)
                        or (note['level'] == 'WARN' and note['note_id'] not in DEFENDED_WARNINGS)):
                    findings.append('%s (%s): %s %s: %s' % (path, accept, note['level'], note['note_id'],
                                                            note['summary']))
        self.assertEqual(findings, [], '\n'.join(findings))
        # The lint did look: the checks REDbot makes on a value ran and passed.
        ran = {note['note_id'] for note in verdicts[('/buckets/lint/keys/chunked', '*/*', None)]['notes']}
        self.assertLessEqual({'INM_304', 'RANGE_CORRECT'}, ran, ran)

    def test_several_ranges_of_a_gzip_value_read_with_curl_compressed_and_requests(self):
        url, ranged = self.url + '/buckets/lint/keys/gzipped', {'Range': 'bytes=0-9,40-49'}
        response = requests.get(url, headers=ranged, timeout=10)   # requests decodes a Content-Encoding it is given
        self.assertEqual(response.status_code, 206)
        self.assertNotIn('Content-Encoding', response.headers)
        self.assertIn(GZIPPED[40:50], response.content)
        curl = subprocess.run(['curl', '--silent', '--show-error', '--fail', '--compressed', '-H',
                               'Range: bytes=0-9,40-49', url], capture_output=True, timeout=30)
        self.assertEqual(curl.returncode, 0, curl.stderr)
        self.assertIn(GZIPPED[:10], curl.stdout)
