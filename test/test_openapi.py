"""docs/openapi.yaml: in step with the routes, and the fuzzing it drives.

The description must name exactly the routes and methods controller.py
serves.  Schemathesis then generates requests from it, valid ones and ones
that break it on purpose, against the real server (serve.py under Granian
over SQLite partitions): whatever a client sends, the answer is never a 5xx
other than 503/507, comes in time, and every error is an error document.
"""
import base64
import json
import os
import re
import time
import unittest
import urllib.parse

import hypothesis
import mimeparse
import requests
import schemathesis
import yaml
from hypothesis import strategies
from schemathesis.generation import GenerationMode

import controller
from test import support
from test.server import REPO, StoreServer
from test.test_server import CONFIGURATION
from kvstore.coordinator.versions import context_binding
from kvstore.http import negotiation

SPEC_PATH = os.path.join(REPO, 'docs', 'openapi.yaml')
VERBS = ('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS')
FUZZ_EXAMPLES = 400      # schemathesis' cases from the description
HOSTILE_EXAMPLES = 400   # cases built to break parsers (below)
REQUEST_TIMEOUT = 10     # seconds: an answer slower than this is a hang
ALLOWED_5XX = (503, 507)


def routes():
    """[(regular expression, resource class)] in the order web.py tries them."""
    return [(pattern, getattr(controller, name)) for pattern, name in zip(controller.urls[::2], controller.urls[1::2])]


def served_methods(resource):
    """The methods a resource answers: its verbs, and HEAD wherever GET is (web.py)."""
    verbs = {verb for verb in VERBS if callable(getattr(resource, verb, None))}
    return verbs | {'HEAD'} if 'GET' in verbs else verbs


def resource_of(path):
    """The resource web.py gives a concrete path to, or None."""
    return next((resource for pattern, resource in routes() if re.match('^%s$' % pattern, path)), None)


def accepts_json(headers):
    accept = next((v for k, v in headers.items() if k.lower() == 'accept'), None)
    if accept is None:
        return True
    try:
        return mimeparse.quality('application/json', accept) > 0
    except mimeparse.MimeTypeParseException:
        return True   # an Accept that cannot be parsed gets JSON


def operations():
    """[(method, path template)] the description names."""
    return [(method.upper(), template) for template, item in load_spec()['paths'].items()
            for method in item if method.upper() in VERBS]


# -- hostile input: what schemathesis rarely generates ------------------------------

def deep_json(depth):
    return '[' * depth + ']' * depth


digits = strategies.one_of(
    strategies.sampled_from(['\u00b2', '\u2460', '\u0661\u0660', '\uff11', '0', '-1', '1e3', ' 1', '1_0']),
    strategies.integers(1, 6000).map(lambda n: '9' * n))


def json_texts(depth):
    return strategies.one_of(
        strategies.integers(1, depth).map(deep_json),
        strategies.recursive(strategies.none() | strategies.booleans() | strategies.integers() | strategies.text(),
                             lambda inner: strategies.lists(inner) | strategies.dictionaries(strategies.text(), inner),
                             max_leaves=20).map(json.dumps))


# A context: base64url of JSON of any shape (a plain clock, a clock bound to a
# key or to something else), or text of no shape.  All the
# headers stay well under the 400 KiB request head Granian reads.
context = strategies.one_of(
    json_texts(10000).map(lambda text: base64.urlsafe_b64encode(text.encode()).decode().rstrip('=')),
    strategies.dictionaries(strategies.text(max_size=50), strategies.integers(-1, 2 ** 70), max_size=300).map(
        lambda clock: base64.urlsafe_b64encode(json.dumps(clock).encode()).decode().rstrip('=')),
    strategies.fixed_dictionaries({'c': strategies.dictionaries(strategies.sampled_from(['p1', 'p2', 'x']),
                                                                strategies.integers(-1, 2 ** 70)),
                                   'k': strategies.sampled_from([context_binding('b', 'k'), '', '0' * 16])}).map(
        lambda bound: base64.urlsafe_b64encode(json.dumps(bound).encode()).decode().rstrip('=')),
    strategies.text(strategies.characters(exclude_characters='\r\n'), max_size=100))   # a header value on the wire
# Any byte a header value may carry on the wire but CR and LF, up to 6 KiB.
header_value = strategies.one_of(
    strategies.text(strategies.characters(max_codepoint=255, exclude_characters='\r\n'), max_size=300),
    strategies.integers(1, 6000).map(lambda n: 'x' * n), digits)
# A path segment or a query value as raw bytes, percent-encoded: UTF-8 or not.
escaped = strategies.one_of(
    strategies.binary(max_size=40), strategies.text(max_size=40).map(str.encode), digits.map(str.encode),
    strategies.integers(1, 2000).map(lambda n: b'k' * n)).map(lambda raw: urllib.parse.quote(raw, safe=''))
QUERY_NAMES = ('r', 'w', 'limit', 'prefix', 'cursor', 'force')
HEADER_NAMES = ('X-Context', 'Content-Type', 'Cache-Control', 'Expires', 'Content-Encoding', 'Content-Disposition',
                'Content-Language', 'X-Meta-Note', 'X-Meta-', 'Range', 'If-Range', 'If-Match', 'If-None-Match',
                'If-Modified-Since', 'If-Unmodified-Since', 'Accept', 'Expect')


@strategies.composite
def hostile_requests(draw, operations):
    """(method, target, headers, body): a described operation, its parameters
    and headers drawn from the values above."""
    method, template = draw(strategies.sampled_from(operations))
    path = re.sub(r'\{[^}]+\}', lambda _: draw(strategies.one_of(
        strategies.just('b'), strategies.just('k'), escaped.filter(bool))), template)
    query = draw(strategies.dictionaries(strategies.sampled_from(QUERY_NAMES), escaped, max_size=3))
    headers = draw(strategies.dictionaries(strategies.sampled_from(HEADER_NAMES), header_value, max_size=4))
    if draw(strategies.booleans()):
        headers['X-Context'] = draw(context)
    body = None
    if method in ('PUT', 'POST'):
        body = draw(strategies.one_of(json_texts(100000).map(str.encode), strategies.binary(max_size=300)))
    target = path + ('?' + '&'.join('%s=%s' % item for item in query.items()) if query else '')
    return method, target, headers, body


def load_spec():
    with open(SPEC_PATH, encoding='utf-8') as f:
        return yaml.safe_load(f)


class TestDescriptionMatchesRoutes(unittest.TestCase):

    def test_every_described_path_and_method_is_served_and_every_route_is_described(self):
        described = {}
        for template, item in load_spec()['paths'].items():
            methods = {m.upper() for m in item if m.upper() in VERBS}
            resource = resource_of(re.sub(r'\{[^}]+\}', 'x', template))
            self.assertIsNotNone(resource, 'described but not served: %s' % template)
            self.assertNotIn(resource, described, 'two descriptions of one route: %s' % template)
            self.assertEqual(methods, served_methods(resource), template)
            described[resource] = template
        self.assertEqual(set(described), {resource for _, resource in routes()},
                         'routes without a description')

    def test_keys_are_described_as_long_as_the_store_takes_them(self):
        # key_length: at most 1024 bytes of UTF-8 (docs/API.md), so at most 1024 characters.
        limit = support.build_config(support.sqlite_partitions('/nonexistent')).key_length
        spec = load_spec()
        located = next(p for p in spec['paths']['/cluster/locate']['get']['parameters'] if p.get('name') == 'key')
        for schema in (spec['components']['parameters']['Key']['schema'], located['schema']):
            self.assertEqual(schema['maxLength'], limit)
        with open(os.path.join(REPO, 'docs', 'API.md'), encoding='utf-8') as f:
            self.assertIn('1 to `key_length` (default and maximum %d) bytes of UTF-8' % limit, f.read())

    def test_every_error_code_the_controller_maps_is_an_error_document(self):
        error = load_spec()['components']['schemas']['Error']
        self.assertEqual(set(error['required']), {'code', 'status', 'message'})
        statuses = {int(status[:3]) for status in negotiation.STATUS.values()}
        self.assertTrue(all(400 <= s <= 599 for s in statuses))


class TestFuzzing(unittest.TestCase):
    """Property-based requests from the description against the real server."""

    @classmethod
    def setUpClass(cls):
        # Long polls and streams end within REQUEST_TIMEOUT (a longer wait is 400 bad_parameter).
        cls.server = StoreServer.running(CONFIGURATION + '\n[feed]\nmax_wait = 0.2\nstream_seconds = 1\n', workers=2)
        cls.base_url = 'http://127.0.0.1:%d' % cls.server.port
        cls.schema = schemathesis.openapi.from_path(SPEC_PATH)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def test_hostile_requests_get_an_answer_and_errors_are_documents(self):
        """Hypothesis alone, over raw sockets (http.client): bytes that are not
        UTF-8 in paths and queries, odd digits, deep or huge JSON in bodies and
        contexts, control characters and kilobytes in header values."""
        started = time.monotonic()

        @hypothesis.settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
        @hypothesis.given(request=hostile_requests(operations()))
        def answered(request):
            method, target, headers, body = request
            conn = self.server.connect(timeout=REQUEST_TIMEOUT)
            try:
                conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value.encode('latin-1' if value.isascii() or max(value) <= '\xff' else 'utf-8'))
                conn.putheader('Content-Length', str(len(body or b'')))
                begun = time.monotonic()
                conn.endheaders(body)
                response = conn.getresponse()
                content = response.read()
                elapsed = time.monotonic() - begun
            except OSError as e:
                raise AssertionError('%s %s %r: %s\nserver log:\n%s' % (
                    method, target[:300], {k: v[:100] for k, v in headers.items()}, e, self.server.log()[-2000:]))
            finally:
                conn.close()
            what = '%s %s %r -> %d %s: %r' % (method, target[:300], {k: v[:200] for k, v in headers.items()},
                                               response.status, response.getheaders(), content[:300])
            self.assertLess(elapsed, REQUEST_TIMEOUT, what)
            self.assertTrue(response.status < 500 or response.status in ALLOWED_5XX, what)
            self.assertNotIn(b'Traceback', content, what)
            content_type = response.getheader('Content-Type', '')
            if response.status >= 400 and method != 'HEAD' and content_type.startswith('application/json'):
                doc = json.loads(content)
                self.assertEqual(doc['status'], response.status, what)
                self.assertTrue(doc['code'] and doc['message'], what)
        answered()
        self.assertLess(time.monotonic() - started, 60)
        self.assertTrue(self.server.answers(), self.server.log())

    def cases(self):
        operations = [result.ok() for result in self.schema.get_all_operations()]
        return strategies.one_of([operation.as_strategy(mode) for operation in operations
                                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])

    def check(self, case, response, elapsed):
        what = '%s %s %s -> %d %s: %s' % (case.method, response.request.url, case.headers, response.status_code,
                                          dict(response.headers), response.content[:300])
        self.assertLess(elapsed, REQUEST_TIMEOUT, what)
        self.assertTrue(response.status_code < 500 or response.status_code in ALLOWED_5XX, what)
        self.assertNotIn(b'Traceback', response.content, what)
        if response.status_code >= 400 and case.method != 'HEAD':
            # JSON when JSON is accepted (and when nothing is: see respond_error).
            content_type = response.headers.get('content-type', [''])[0]
            self.assertTrue(content_type.startswith('application/json') or not accepts_json(case.headers or {}),
                            what)
            if content_type.startswith('application/json'):
                doc = response.json()
                self.assertEqual(doc['status'], response.status_code, what)
                self.assertIsInstance(doc['code'], str, what)
                self.assertTrue(doc['message'], what)

    def test_generated_requests_get_an_answer_and_errors_are_documents(self):
        session = requests.Session()
        started = time.monotonic()

        @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck), phases=[
                                 hypothesis.Phase.explicit, hypothesis.Phase.generate])
        @hypothesis.given(case=self.cases())
        def answered(case):
            begun = time.monotonic()
            try:
                response = case.call(base_url=self.base_url, session=session, timeout=REQUEST_TIMEOUT)
            except requests.exceptions.InvalidHeader:
                hypothesis.reject()   # a header the client library itself will not send
            self.check(case, response, time.monotonic() - begun)
        answered()
        self.assertLess(time.monotonic() - started, 60)
        self.assertTrue(self.server.answers(), self.server.log())
