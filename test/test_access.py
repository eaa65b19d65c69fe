"""Safe on a network (access.py, gossip.py): credentials, signed gossip, and
what a browser may do, tried as an attacker would.

Most tests speak to the application in process (WebTest) over SQLite
partitions; TestRealServer repeats the attacks a page can make against the
real server (serve.py under Granian) with http.client.
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

from prometheus_client.parser import text_string_to_metric_families

from kvstore import configuration
import controller
from kvstore.coordinator import gossip
from kvstore.http import access, mediatypes
from test import support
from test.server import StoreServer

SECRET = 'a-cluster-secret-for-the-tests-only-0123456789'
EVIL = 'http://evil.example'
APP = 'https://app.example'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def strict_json(text):
    """json.loads that refuses what is not JSON (NaN, Infinity)."""
    def refuse(constant):
        raise ValueError('not JSON: %s' % constant)
    return json.loads(text, parse_constant=refuse)


def resource(path):
    """The name of the controller.urls resource that serves path."""
    return next(name for pattern, name in zip(controller.urls[::2], controller.urls[1::2])
                if re.match('^%s\\Z' % pattern, path.split('?')[0]))


def token_section(token, roles):
    return {'sha256': hashlib.sha256(token.encode()).hexdigest(), 'roles': roles}


class SQLiteApp(support.OnSQLite, support.StoreSpecification, unittest.TestCase):
    """A store over SQLite partitions, spoken to in process; Host is localhost:80."""

    def assertError(self, response, status, code):
        self.assertEqual(response.status_int, status, response.text)
        doc = response.json
        self.assertEqual((doc['code'], doc['status']), (code, status))
        self.assertTrue(doc['message'])


# -- gossip ------------------------------------------------------------------------

class TestForgedGossip(SQLiteApp):
    store_sections = {'cluster': {'secret': SECRET}}

    def gossip(self, view, secret=SECRET, timestamp=None, status='*', body=None, host='localhost:80', signed=None):
        body = body if body is not None else json.dumps({'partitions': view}).encode()
        headers = {'Content-Type': 'application/json'}
        if signed is not None:
            headers.update(signed)
        elif secret is not None:
            timestamp = '%.3f' % (timestamp if timestamp is not None else time.time())
            nonce = os.urandom(16).hex()
            headers.update({gossip.TIMESTAMP: timestamp, gossip.NONCE: nonce, gossip.SIGNATURE: gossip.signature(
                secret, gossip.REQUEST, host, timestamp, nonce, body)})
        return self.app.post('/cluster/gossip', body, headers=headers, status=status)

    def test_a_message_is_taken_once_and_only_by_the_host_it_was_sent_to(self):
        body = json.dumps({'partitions': self.down_view()}).encode()
        for host in ('127.0.0.1:80', 'localhost:81'):   # sent to another front end
            signed = gossip.signed_headers(SECRET, gossip.REQUEST, host, body)
            self.assertError(self.gossip(None, body=body, signed=signed), 403, 'gossip_refused')
        signed = gossip.signed_headers(SECRET, gossip.REQUEST, 'localhost:80', body)
        taken = self.gossip(None, body=body, signed=signed)
        self.assertEqual(taken.status_int, 200, taken.text)
        gossip.verify(SECRET, gossip.ANSWER, 'localhost:80', taken.headers[gossip.TIMESTAMP], signed[gossip.NONCE],
                      taken.headers[gossip.SIGNATURE], taken.body)
        self.store.health.succeeded('p1')
        replayed = self.gossip(None, body=body, signed=signed)
        self.assertError(replayed, 403, 'gossip_refused')
        self.assertIn('replay', replayed.json['message'])
        self.assertUnchanged()

    def test_signed_gossip_nested_too_deeply_is_400_and_changes_nothing(self):
        body = ('{"partitions": %s}' % ('[' * 8000 + ']' * 8000)).encode()   # under the bound
        self.assertError(self.gossip(None, body=body), 400, 'bad_body')
        self.assertEqual(self.store.health.view()['p1']['state'], 'up')

    def down_view(self, **changes):
        now = time.time()
        return {'p1': dict({'state': 'down', 'since': now, 'observed': now, 'last_error': 'forged'}, **changes)}

    def cluster(self):
        response = self.app.get('/cluster', status='*')
        self.assertEqual(response.status_int, 200, response.text)
        return {p['name']: p for p in strict_json(response.text)['partitions']}

    def assertUnchanged(self):
        self.assertEqual(self.cluster()['p1']['state'], 'up')
        self.assertEqual(self.app.put('/buckets/%s/keys/k' % self.bucket, b'v',
                                      headers={'Content-Type': 'text/plain'}).status_int, 201)

    def test_unsigned_gossip_is_refused_and_changes_nothing(self):
        self.assertError(self.gossip(self.down_view(), secret=None), 403, 'gossip_refused')
        self.assertUnchanged()

    def test_gossip_signed_with_another_secret_is_refused(self):
        self.assertError(self.gossip(self.down_view(), secret='x' * 40), 403, 'gossip_refused')
        self.assertUnchanged()

    def test_a_replayed_message_older_than_the_window_is_refused(self):
        old = time.time() - gossip.WINDOW - 5
        view = self.down_view(since=old, observed=old)
        self.assertError(self.gossip(view, timestamp=old), 403, 'gossip_refused')
        self.assertError(self.gossip(view, timestamp=time.time() + gossip.WINDOW + 5), 403, 'gossip_refused')
        self.assertUnchanged()

    def test_signed_gossip_with_impossible_times_is_refused_before_anything_changes(self):
        now = time.time()
        for bad in ({'since': 1e308}, {'observed': 'nan'}, {'observed': now + 3600}, {'since': -1},
                    {'state': 'gone'}, {'last_error': 'x' * 10000}, {'last_error': 5}):
            # An observation that is sound, for p2, comes with it: nothing is merged.
            view = dict(self.down_view(**bad), p2=self.down_view()['p1'])
            self.assertError(self.gossip(view), 400, 'bad_gossip')
        self.assertError(self.gossip({'p9': self.down_view()['p1']}), 400, 'bad_gossip')
        self.assertEqual(self.cluster()['p2']['state'], 'up')
        self.assertUnchanged()

    def test_nan_and_infinity_in_the_json_itself_are_refused(self):
        for constant in ('NaN', 'Infinity'):
            body = ('{"partitions": {"p1": {"state": "down", "since": %s, "observed": %s, "last_error": null}}}'
                    % (constant, constant)).encode()
            self.assertError(self.gossip(None, body=body), 400, 'bad_gossip')
        self.assertUnchanged()

    def test_a_body_over_the_limit_is_refused_unread(self):
        limit = self.store.gossip.max_bytes
        body = json.dumps({'partitions': {}, 'padding': 'x' * limit}).encode()
        self.assertError(self.gossip(None, body=body), 413, 'body_too_large')

    def test_signed_sound_gossip_is_merged_and_the_answer_is_signed(self):
        response = self.gossip(self.down_view())
        self.assertEqual(response.status_int, 200, response.text)
        with self.assertRaises(Exception):   # an answer is signed over its request's nonce
            gossip.verify(SECRET, gossip.ANSWER, 'localhost:80', response.headers[gossip.TIMESTAMP], 'another',
                          response.headers[gossip.SIGNATURE], response.body)
        self.assertEqual(self.cluster()['p1']['state'], 'down')
        self.store.health.succeeded('p1')

    def test_without_a_secret_gossip_is_refused(self):
        store = support.open_store(self.partitions)
        try:
            app = support.web_app(store)
            body = json.dumps({'partitions': self.down_view()}).encode()
            response = app.post('/cluster/gossip', body, headers={'Content-Type': 'text/plain'}, status='*')
            self.assertError(response, 403, 'gossip_refused')
            self.assertEqual(store.health.view()['p1']['state'], 'up')
        finally:
            store.close()

    def test_peers_without_a_secret_is_a_configuration_error(self):
        with self.assertRaises(configuration.ConfigError) as raised:
            support.build_config(self.partitions, {'cluster': {'peers': '127.0.0.1:9'}})
        self.assertIn('[cluster] secret', str(raised.exception))
        with self.assertRaises(configuration.ConfigError):
            support.build_config(self.partitions, {'cluster': {'secret': 'short'}})


# -- tokens ------------------------------------------------------------------------

TOKENS = {'admin': 'admin:*', 'writer': 'write:*', 'reader': 'read:*', 'elsewhere': 'admin:other-*',
          'scoped': 'read:shared-*, write:mine-*'}


class TestTokens(SQLiteApp):
    store_sections = {'token-%s' % name: token_section('tok-' + name, roles) for name, roles in TOKENS.items()}

    def call(self, method, path, token=None, body=b'', status='*', headers=None):
        headers = dict(headers or {})
        if token:
            headers['Authorization'] = 'Bearer tok-' + token
        if body:
            headers.setdefault('Content-Type', 'text/plain')
        return self.app.request(path, method=method, body=body, headers=headers, status=status,
                                expect_errors=True)

    def routes(self):
        """(method, path, body, role needed, token without it) for every route and method of controller.urls;
        each call succeeds with the role (a bucket of its own, holding key k)."""
        b = support.unique('m')
        self.call('PUT', '/buckets/%s' % b, 'admin')
        self.call('PUT', '/buckets/%s/keys/k' % b, 'admin', b'v')
        props = json.dumps({'conflicts': 'siblings'}).encode()
        return b, [
            ('GET', '/', b'', 'any', None),
            ('GET', '/buckets', b'', 'any', None),
            ('GET', '/cluster', b'', 'admin', 'elsewhere'),
            ('GET', '/cluster/locate?bucket=%s&key=k' % b, b'', 'read', 'elsewhere'),
            ('GET', '/metrics', b'', 'admin', 'elsewhere'),
            ('GET', '/buckets/%s' % b, b'', 'read', 'elsewhere'),
            ('PUT', '/buckets/%s' % b, props, 'admin', 'writer'),
            ('GET', '/buckets/%s/keys' % b, b'', 'read', 'elsewhere'),
            ('GET', '/buckets/%s/changes?since=0' % b, b'', 'read', 'elsewhere'),
            ('POST', '/buckets/%s/keys' % b, b'new', 'write', 'reader'),
            ('GET', '/buckets/%s/keys/k' % b, b'', 'read', 'elsewhere'),
            ('HEAD', '/buckets/%s/keys/k' % b, b'', 'read', 'elsewhere'),
            ('PUT', '/buckets/%s/keys/k' % b, b'v2', 'write', 'reader'),
            ('POST', '/buckets/%s/keys/fresh' % b, b'v', 'write', 'reader'),
            ('DELETE', '/buckets/%s/keys/k' % b, b'', 'write', 'reader'),
            ('DELETE', '/buckets/%s?force=true' % b, b'', 'admin', 'writer'),
        ]

    def test_the_matrix_no_token_401_wrong_role_403_right_role_2xx(self):
        _, rows = self.routes()
        tried = {(method, resource(path)) for method, path, _, _, _ in rows}
        served = {(m, name) for name in controller.urls[1::2] if name not in ('ClusterGossip', 'Health', 'Ready')
                  for m in ('GET', 'PUT', 'POST', 'DELETE') if hasattr(getattr(controller, name), m)}
        self.assertEqual(served - tried, set(), 'every route and method of controller.urls is tried')
        for method, path, body, role, wrong in rows:
            with self.subTest(method=method, path=path):
                anonymous = self.call(method, path, body=body)
                self.assertEqual(anonymous.status_int, 401)
                self.assertEqual(anonymous.headers['WWW-Authenticate'], 'Bearer realm="kvstore"')
                unknown = self.call(method, path, 'nobody', body)
                self.assertEqual(unknown.status_int, 401)
                self.assertIn('error="invalid_token"', unknown.headers['WWW-Authenticate'])
                if method != 'HEAD':
                    self.assertError(anonymous, 401, 'unauthenticated')
                if wrong:
                    self.assertEqual(self.call(method, path, wrong, body).status_int, 403)
                least = {'any': 'scoped', 'read': 'reader', 'write': 'writer', 'admin': 'admin'}[role]
                allowed = self.call(method, path, least, body)
                self.assertIn(allowed.status_int, (200, 201), allowed.text)

    def test_health_checks_need_no_token(self):
        self.assertEqual(self.call('GET', '/health').json, {'status': 'ok'})
        ready = self.call('GET', '/ready')
        self.assertEqual(ready.status_int, 200)
        self.assertEqual(set(ready.json['partitions'].values()), {'up'})

    def test_refusals_say_nothing_of_what_exists_and_change_nothing(self):
        b, _ = self.routes()
        missing = support.unique('m')
        answers = []
        for bucket in (b, missing):
            for method, path, body in (('GET', '/buckets/%s/keys/k', b''), ('PUT', '/buckets/%s/keys/k', b'x'),
                                       ('DELETE', '/buckets/%s?force=true', b''), ('GET', '/buckets/%s', b'')):
                for token in (None, 'elsewhere'):
                    response = self.call(method, path % bucket, token, body)
                    answers.append((method, path, token, response.status_int,
                                    response.json['message'].replace(bucket, 'B')))
        self.assertEqual(answers[:len(answers) // 2], answers[len(answers) // 2:])
        self.assertEqual(self.call('GET', '/buckets/%s/keys/k' % b, 'admin').body, b'v')
        self.assertEqual(self.call('GET', '/buckets/%s' % missing, 'admin').status_int, 404)

    def test_a_preflight_says_nothing_of_a_bucket_and_the_request_meets_its_rules(self):
        b, _ = self.routes()
        rules = [{'origins': [APP], 'methods': ['PUT'], 'headers': ['content-type', 'authorization'], 'max_age': 60}]
        self.assertEqual(self.call('PUT', '/buckets/' + b, 'admin', json.dumps({'cors': rules}).encode(),
                                   headers={'Content-Type': 'application/json'}).status_int, 200)
        answers = []
        for bucket in (b, support.unique('m')):
            for origin in (APP, EVIL):
                response = self.call('OPTIONS', '/buckets/%s/keys/k' % bucket, headers={
                    'Origin': origin, 'Access-Control-Request-Method': 'PUT',
                    'Access-Control-Request-Headers': 'authorization, content-type'})
                answers.append((response.status_int, sorted((k, v.replace(origin, 'O'))
                                                            for k, v in response.headers.items() if k != 'Date'),
                                response.body))
        self.assertEqual(answers[1:], answers[:1] * 3)
        # The request itself meets the bucket's rules: origin, method and headers.
        path = '/buckets/%s/keys/k' % b
        allowed = self.call('PUT', path, 'writer', b'v', headers={'Origin': APP, 'Content-Type': 'application/json'})
        self.assertEqual(allowed.status_int, 200, allowed.text)
        self.assertEqual(allowed.headers['Access-Control-Allow-Origin'], APP)
        for origin, method, headers in ((EVIL, 'PUT', {}), (APP, 'DELETE', {}), (APP, 'PUT', {'X-Meta-A': '1'}),
                                        (APP, 'PUT', {'Cache-Control': 'no-store'})):
            refused = self.call(method, path, 'writer', b'x' if method == 'PUT' else b'',
                                headers=dict(headers, Origin=origin))
            self.assertError(refused, 403, 'cross_site_refused')
        self.assertEqual(self.call('GET', path, 'reader').body, b'v')

    def test_ready_asks_the_partitions_at_most_once_a_second_whoever_asks(self):
        def calls():
            text = self.call('GET', '/metrics', 'admin').text
            return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                       if s.name == 'kvstore_replica_calls_total')
        first, second = calls(), calls()
        started = time.monotonic()
        for _ in range(50):
            self.assertEqual(self.call('GET', '/ready').status_int, 200)
        seconds = time.monotonic() - started
        asked = calls() - 2 * second + first   # less the scrape's own calls (as many as the one before)
        self.assertLessEqual(asked, len(self.partitions) * (int(seconds) + 2), '%d calls in %.1f s' % (asked, seconds))

    def test_patterns_and_the_bucket_list(self):
        for bucket in ('shared-a', 'mine-a', 'other-a'):
            self.call('PUT', '/buckets/%s' % bucket, 'admin')
        self.assertEqual(self.call('PUT', '/buckets/mine-a/keys/k', 'scoped', b'v').status_int, 201)
        self.assertEqual(self.call('GET', '/buckets/mine-a/keys/k', 'scoped').status_int, 200)
        self.assertEqual(self.call('PUT', '/buckets/shared-a/keys/k', 'scoped', b'v').status_int, 403)
        self.assertEqual(self.call('GET', '/buckets/other-a/keys', 'scoped').status_int, 403)
        listed = self.call('GET', '/buckets', 'scoped').json['buckets']
        self.assertIn('shared-a', listed)
        self.assertIn('mine-a', listed)
        self.assertNotIn('other-a', listed)

    def test_the_command_prints_a_token_once_and_its_configuration(self):
        out = subprocess.run([sys.executable, '-m', 'kvstore.http.access', 'token', 'ci', 'write:ci-*'],
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
        token = out.split('SHA-256): ')[1].split()[0]
        section = out[out.index('[token-ci]'):]
        self.assertNotIn(token, section)
        fields = dict(line.split(' = ') for line in section.strip().splitlines()[1:])
        self.assertEqual(fields, {'sha256': hashlib.sha256(token.encode()).hexdigest(), 'roles': 'write:ci-*'})
        store = support.open_store(self.partitions, {'token-ci': fields})
        try:
            app = support.web_app(store)
            ok = app.put('/buckets/ci-x/keys/k', b'v', headers={'Authorization': 'Bearer ' + token,
                                                                 'Content-Type': 'text/plain'})
            self.assertEqual(ok.status_int, 201)
            app.put('/buckets/other/keys/k', b'v', status=403, headers={
                'Authorization': 'Bearer ' + token, 'Content-Type': 'text/plain'})
        finally:
            store.close()
        refused = subprocess.run([sys.executable, '-m', 'kvstore.http.access', 'token', 'ci', 'owner:*'],
                                 capture_output=True, text=True, cwd=REPO)
        self.assertEqual(refused.returncode, 2)

    def test_bad_token_sections_are_configuration_errors(self):
        for fields in ({'sha256': 'abc', 'roles': 'read:*'}, {'sha256': '0' * 64, 'roles': 'owner:*'},
                       {'sha256': '0' * 64, 'roles': 'read:'}):
            with self.assertRaises(configuration.ConfigError):
                support.build_config(self.partitions, {'token-x': fields})


# -- browsers ------------------------------------------------------------------------

# What browsers read as a value's type, as the WHATWG Fetch standard (and
# web-platform-tests' fetch/content-type) have it: [header, the type a browser takes].
BROWSER_READINGS = [
    ('text/plain; a=b, text/html', 'text/html'),
    ('image/png; a=b, text/html', 'text/html'),
    ('audio/x;a=b,image/svg+xml', 'image/svg+xml'),
    ('text/html, text/plain', 'text/plain'),
    ('text/plain, */*', 'text/plain'),
    ('text/plain, bogus', 'text/plain'),
    ('text/html;charset="a,b", text/plain', 'text/plain'),
    ('text/plain;charset="a,b"', 'text/plain'),
    (' TEXT/Plain ;\tcharset=utf-8', 'text/plain'),
    ('text/plain;', 'text/plain'),
    ('text/plain;x="\\"\\",text/html"', 'text/plain'),
    ('*/*', None),
    ('text / plain', None),
    ('text/', None),
    ('text', None),
    ('', None),
]


class TestMediaTypes(unittest.TestCase):
    """mediatypes.py reads a Content-Type as a browser does, and the store
    keeps only one whose reading no one can disagree with."""

    def test_the_type_a_browser_takes(self):
        for header, essence in BROWSER_READINGS:
            media_type = mediatypes.extract(header)
            self.assertEqual(media_type and media_type.essence, essence, header)

    def test_one_type_or_none(self):
        for header in ('text/plain; a=b, text/html', 'image/png; a=b, text/html', 'audio/x;a=b,image/svg+xml',
                       'text/plain, */*', 'text/plain,', ',text/plain', '*/*', 'text/ plain', 'te xt/plain',
                       'text/plain\x00', 'text/plain;charset="a,b"', 'text/plain; x=",text/html,"'):
            self.assertIsNone(mediatypes.single_type(header), header)
        for header, essence in (('text/plain;charset="a;b"', 'text/plain'), ('image/PNG', 'image/png'),
                                ('application/json; charset=utf-8', 'application/json'),
                                ('text/plain; bare; =x; a="\\q"', 'text/plain')):
            self.assertEqual(mediatypes.single_type(header).essence, essence, header)

    def test_parameters(self):
        media_type = mediatypes.parse('Text/HTML;Charset="utf-8\\\\";charset=latin1; q=; z="a;b" x; bad name=1')
        self.assertEqual(media_type.essence, 'text/html')
        self.assertEqual(media_type.parameters, {'charset': 'utf-8\\', 'z': 'a;b'})

    def test_the_sandbox_is_decided_on_the_type_a_browser_takes(self):
        for header in ('text/plain', 'image/png; x=y', 'audio/ogg', 'video/mp4', 'application/json; charset=utf-8'):
            self.assertTrue(access.is_safe_type(header), header)
        for header in ('text/plain; a=b, text/html', 'image/png; a=b, text/html', 'audio/x;a=b,image/svg+xml',
                       'text/html', 'text/plain-html', 'image/svg+xml', '*/*', 'multipart/byteranges; boundary=x',
                       'text/plain, text/plain'):
            self.assertFalse(access.is_safe_type(header), header)


class TestBrowsers(SQLiteApp):
    store_sections = {'access': {'allowed_hosts': 'kv.example.com, 10.1.2.3:8080'}}

    def put(self, key, headers=None, status='*', body=b'v', content_type='text/plain'):
        return self.app.put('/buckets/%s/keys/%s' % (self.bucket, key), body, status=status,
                            headers=dict({'Content-Type': content_type}, **(headers or {})))

    def absent(self, key):
        return self.app.get('/buckets/%s/keys/%s' % (self.bucket, key), status='*').status_int == 404

    def test_a_state_change_from_another_site_is_refused(self):
        for i, headers in enumerate(({'Origin': EVIL}, {'Origin': 'null'}, {'Sec-Fetch-Site': 'cross-site'},
                                     {'Sec-Fetch-Site': 'same-site', 'Origin': 'http://localhost:3000'},
                                     {'Referer': EVIL + '/page.html'})):
            self.assertError(self.put('k%d' % i, headers), 403, 'cross_site_refused')
            self.assertTrue(self.absent('k%d' % i))
        # The store's own origin, and clients that send no browser headers, may write.
        self.assertEqual(self.put('a', {'Origin': 'http://localhost:80', 'Sec-Fetch-Site': 'same-origin'})
                         .status_int, 201)
        self.assertEqual(self.put('b').status_int, 201)
        # Reads from another site are answered (the browser keeps them from the page).
        got = self.app.get('/buckets/%s/keys/a' % self.bucket, headers={'Origin': EVIL})
        self.assertNotIn('Access-Control-Allow-Origin', got.headers)

    def test_a_cross_site_form_post_and_forced_delete_are_refused(self):
        form = self.app.post('/buckets/%s/keys/k' % self.bucket, {'value': 'planted'}, status='*',
                             headers={'Origin': EVIL, 'Sec-Fetch-Site': 'cross-site'})
        self.assertError(form, 403, 'cross_site_refused')
        self.assertTrue(self.absent('k'))
        self.put('kept')
        deleted = self.app.delete('/buckets/%s?force=true' % self.bucket, status='*', headers={'Origin': EVIL})
        self.assertError(deleted, 403, 'cross_site_refused')
        self.assertFalse(self.absent('kept'))

    def test_cors_rules_of_a_bucket_allow_chosen_origins_and_methods(self):
        rules = [{'origins': [APP], 'methods': ['GET', 'PUT'], 'headers': ['content-type', 'authorization'],
                  'max_age': 600}]
        self.app.put('/buckets/' + self.bucket, json.dumps({'cors': rules}))
        key = '/buckets/%s/keys/k' % self.bucket
        preflight = self.app.options(key, headers={'Origin': APP, 'Access-Control-Request-Method': 'PUT',
                                                   'Access-Control-Request-Headers': 'Content-Type'})
        self.assertEqual(preflight.status_int, 204)
        self.assertEqual(preflight.headers['Access-Control-Allow-Origin'], APP)
        self.assertEqual(preflight.headers['Access-Control-Allow-Methods'], 'GET, PUT')
        self.assertEqual(preflight.headers['Access-Control-Allow-Headers'], 'content-type')
        self.assertEqual(preflight.headers['Access-Control-Max-Age'], '600')
        for origin, method, extra in ((EVIL, 'PUT', ''), (APP, 'DELETE', ''), (APP, 'PUT', 'x-meta-a')):
            refused = self.app.options(key, status='*', headers={
                'Origin': origin, 'Access-Control-Request-Method': method, 'Access-Control-Request-Headers': extra})
            self.assertError(refused, 403, 'cross_site_refused')
        written = self.put('k', {'Origin': APP})
        self.assertEqual(written.status_int, 201)
        self.assertEqual(written.headers['Access-Control-Allow-Origin'], APP)
        self.assertIn('ETag', written.headers['Access-Control-Expose-Headers'])
        self.assertEqual(self.app.get(key, headers={'Origin': APP}).headers['Access-Control-Allow-Origin'], APP)
        self.assertError(self.app.delete(key, status='*', headers={'Origin': APP}), 403, 'cross_site_refused')
        self.assertError(self.put('k2', {'Origin': EVIL}), 403, 'cross_site_refused')
        # Even a rule for every origin: a sandboxed page ("null"), or a browser
        # that names no origin, may not write.
        self.app.put('/buckets/' + self.bucket, json.dumps({'cors': [{'origins': ['*'], 'methods': ['PUT']}]}))
        self.assertEqual(self.put('k3', {'Origin': APP}).status_int, 201)
        for headers in ({'Origin': 'null'}, {'Sec-Fetch-Site': 'cross-site'}):
            self.assertError(self.put('k4', headers), 403, 'cross_site_refused')

    def test_a_cors_property_is_rules_or_refused(self):
        rules = [{'origins': ['https://*.app.example', APP], 'methods': ['GET'], 'headers': ['*']}]
        self.app.put('/buckets/' + self.bucket, json.dumps({'cors': rules}))
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['cors'], rules)
        for bad in ('*', [{'origins': ['*'], 'methods': ['PATCH']}], [{'origins': [], 'methods': ['GET']}],
                    [{'origins': ['javascript:x'], 'methods': ['GET']}], [{'origins': ['*'], 'methods': ['GET'],
                                                                            'max_age': -1}]):
            response = self.app.put('/buckets/' + self.bucket, json.dumps({'cors': bad}), status='*')
            self.assertError(response, 400, 'bad_property')

    def test_stored_html_is_served_sandboxed(self):
        script = b'<script>fetch("/buckets/victim?force=true", {method: "DELETE"})</script>'
        for key, content_type in (('page', 'text/html'), ('image', 'image/svg+xml'), ('doc', 'application/xml'),
                                  ('odd', 'application/x-unknown'), ('js', 'text/javascript')):
            self.put(key, body=script, content_type=content_type)
            served = self.app.get('/buckets/%s/keys/%s' % (self.bucket, key))
            self.assertEqual(served.body, script)
            self.assertEqual(served.headers['Content-Security-Policy'], 'sandbox', content_type)
            self.assertEqual(served.headers['X-Content-Type-Options'], 'nosniff')
        for key, content_type in (('text', 'text/plain'), ('png', 'image/png')):
            self.put(key, body=b'plain', content_type=content_type)
            served = self.app.get('/buckets/%s/keys/%s' % (self.bucket, key))
            self.assertNotIn('Content-Security-Policy', served.headers)
            self.assertEqual(served.headers['X-Content-Type-Options'], 'nosniff')
        # Documents too: the HTML rendering of a record holds stored text (the
        # store's own pages may submit their search form, a GET; never run a script).
        listing = self.app.get('/buckets/%s/keys' % self.bucket, headers={'Accept': 'text/html'})
        self.assertEqual(listing.headers['Content-Security-Policy'], 'sandbox allow-forms')
        missing = self.app.get('/nowhere', status=404)
        self.assertEqual(missing.headers['X-Content-Type-Options'], 'nosniff')

    def test_a_content_type_a_browser_reads_as_another_type_is_refused(self):
        script = b'<script>fetch("/buckets/victim?force=true", {method: "DELETE"})</script>'
        for i, content_type in enumerate(('text/plain; a=b, text/html', 'image/png; a=b, text/html',
                                          'audio/x;a=b,image/svg+xml', 'text/plain, */*', '*/*', 'text/plain,',
                                          'text/plain; x=",text/html,"')):
            self.assertError(self.put('k%d' % i, body=script, content_type=content_type), 400, 'bad_header')
            self.assertTrue(self.absent('k%d' % i), content_type)
        self.assertEqual(self.put('q', content_type='text/plain; charset="a;b"').status_int, 201)

    def test_a_value_stored_with_several_types_is_served_sandboxed(self):
        # Stored before such types were refused: a browser takes the last.
        script = b'<script>fetch("/buckets/victim?force=true", {method: "DELETE"})</script>'
        for i, content_type in enumerate(('text/plain; a=b, text/html', 'image/png; a=b, text/html',
                                          'audio/x;a=b,image/svg+xml')):
            self.store.put(self.bucket, 'k%d' % i, script, content_type)
            path = '/buckets/%s/keys/k%d' % (self.bucket, i)
            served = self.app.get(path)
            self.assertEqual((served.body, served.headers['Content-Type']), (script, content_type))
            self.assertEqual(served.headers.get('Content-Security-Policy'), 'sandbox', content_type)
            ranged = self.app.get(path, headers={'Range': 'bytes=0-1,3-4'}, status=206)
            self.assertEqual(ranged.headers.get('Content-Security-Policy'), 'sandbox', content_type)

    def test_a_foreign_host_is_misdirected(self):
        for host in ('evil.example', 'evil.example:80', 'localhost:81', '127.0.0.2:80', '10.1.2.3:80'):
            response = self.app.get('/buckets', headers={'Host': host}, status='*')
            self.assertError(response, 421, 'misdirected_request')
            refused = self.put('k', {'Host': host})
            self.assertEqual(refused.status_int, 421)
        self.assertTrue(self.absent('k'))
        for host in ('localhost:80', '127.0.0.1:80', '[::1]:80', 'localhost', 'kv.example.com',
                     'KV.example.com:443', '10.1.2.3:8080'):
            self.assertEqual(self.app.get('/buckets', headers={'Host': host}).status_int, 200, host)


# -- the real server ---------------------------------------------------------------------

CONFIGURATION = """
[store]
replicas = 3
r = 2
w = 2
""" + ''.join('\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4))


class TestRealServer(unittest.TestCase):
    """What any page the user opens could send to `make run` on loopback."""

    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer.running(CONFIGURATION, workers=1, threads=4)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def request(self, method, path, body=None, headers=None):
        conn = self.server.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def test_a_form_posted_from_another_origin_stores_nothing(self):
        body = urllib.parse.urlencode({'value': 'planted'})
        response, text = self.request('POST', '/buckets/victim/keys/planted', body, {
            'Content-Type': 'application/x-www-form-urlencoded', 'Origin': EVIL, 'Sec-Fetch-Site': 'cross-site'})
        self.assertEqual(response.status, 403)
        self.assertEqual(json.loads(text)['code'], 'cross_site_refused')
        self.assertEqual(self.request('GET', '/buckets/victim/keys/planted')[0].status, 404)

    def test_no_cors_text_plain_gossip_changes_nothing(self):
        now = time.time()
        view = {'partitions': {'p1': {'state': 'down', 'since': now, 'observed': now, 'last_error': 'x'}}}
        response, _ = self.request('POST', '/cluster/gossip', json.dumps(view), {
            'Content-Type': 'text/plain', 'Origin': EVIL})
        self.assertEqual(response.status, 403)
        response, text = self.request('GET', '/cluster')
        self.assertEqual(response.status, 200)
        self.assertEqual({p['state'] for p in strict_json(text)['partitions']}, {'up'})

    def test_a_rebound_host_name_is_refused(self):
        response, text = self.request('GET', '/buckets', headers={'Host': 'attacker.example:%d' % self.server.port})
        self.assertEqual(response.status, 421)
        self.assertEqual(json.loads(text)['code'], 'misdirected_request')
        self.assertEqual(self.request('GET', '/buckets')[0].status, 200)

    def test_a_request_without_a_host_is_400(self):
        for head in (b'GET /buckets HTTP/1.1\r\nConnection: close\r\n\r\n', b'GET /buckets HTTP/1.0\r\n\r\n',
                     b'GET /buckets HTTP/1.1\r\nHost :\r\nConnection: close\r\n\r\n',
                     b'PUT /buckets/victim/keys/hostless HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx'):
            with socket.create_connection(('127.0.0.1', self.server.port), timeout=10) as sock:
                sock.sendall(head)
                answer = support.read_head(sock)
            self.assertIsNotNone(answer, head)
            self.assertEqual(answer[0], 400, head)
        self.assertEqual(self.request('GET', '/buckets/victim/keys/hostless')[0].status, 404)

    def test_stored_html_comes_sandboxed(self):
        page = b'<script>fetch("/buckets/victim?force=true", {method: "DELETE"})</script>'
        self.assertEqual(self.request('PUT', '/buckets/pages/keys/p', page, {'Content-Type': 'text/html'})[0].status,
                         201)
        response, body = self.request('GET', '/buckets/pages/keys/p')
        self.assertEqual(body, page)
        self.assertEqual(response.getheader('Content-Security-Policy'), 'sandbox')
        self.assertEqual(response.getheader('X-Content-Type-Options'), 'nosniff')

    def test_a_page_on_another_origin_in_a_real_browser_changes_nothing(self):
        # Headless Chromium opens a page of another site that POSTs a form, a
        # no-cors text/plain fetch and forged gossip to the store.
        store = 'http://127.0.0.1:%d' % self.server.port
        now = time.time()
        forged = json.dumps({'partitions': {'p1': {'state': 'down', 'since': now, 'observed': now,
                                                   'last_error': 'forged'}}})
        seen = in_chromium(lambda site: '''<form id="f" method="POST" action="%(store)s/buckets/victim/keys/from-form">
<input name="value" value="planted"></form><script>
const post = (path, body) => fetch("%(store)s" + path, {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: body}).catch(() => null);
Promise.all([post("/buckets/victim/keys/from-fetch", "planted"), post("/cluster/gossip", %(forged)s)])
  .then(() => fetch("/ran")).finally(() => document.getElementById("f").submit());
</script>''' % {'store': store, 'forged': json.dumps(forged)})
        self.assertIn('/ran', seen, 'the page ran its script')
        for key in ('from-form', 'from-fetch'):
            self.assertEqual(self.request('GET', '/buckets/victim/keys/' + key)[0].status, 404, key)
        response, text = self.request('GET', '/cluster')
        self.assertEqual({p['state'] for p in strict_json(text)['partitions']}, {'up'})

    def test_a_stored_value_runs_no_script_in_a_real_browser(self):
        # Values whose Content-Type a browser reads as HTML or SVG (the last
        # type of several), each framed by another site's page: a script in
        # them would run on the store's origin, force-delete a bucket and
        # tell the page.
        self.assertEqual(self.request('PUT', '/buckets/kept/keys/k', b'v')[0].status, 201)
        store = 'http://127.0.0.1:%d' % self.server.port
        types = ('text/plain; a=b, text/html', 'image/png; a=b, text/html', 'audio/x;a=b,image/svg+xml',
                 'text/plain; x=",text/html,"', 'text/html', 'image/svg+xml')

        def attack(site):
            frames = []
            for i, content_type in enumerate(types):
                script = ('fetch("/buckets/kept?force=true", {method: "DELETE"}).finally(() => '
                          'fetch("%s/ran/%d", {mode: "no-cors"}))' % (site, i))
                value = ('<svg xmlns="http://www.w3.org/2000/svg"><script>%s</script></svg>' % script
                         if 'svg' in content_type else '<html><script>%s</script></html>' % script)
                response, _ = self.request('PUT', '/buckets/pages/keys/v%d' % i, value.encode(),
                                           {'Content-Type': content_type})
                self.assertIn(response.status, (201, 400), content_type)
                frames.append('<iframe src="%s/buckets/pages/keys/v%d"></iframe>' % (store, i))
            return '%s<script>fetch("/loaded")</script>' % ''.join(frames)
        seen = in_chromium(attack)
        self.assertIn('/loaded', seen, 'the page ran its script')
        self.assertEqual([path for path in seen if path.startswith('/ran')], [])
        self.assertEqual(self.request('GET', '/buckets/kept/keys/k')[0].status, 200)


class TestGossipReplayedToEveryWorker(unittest.TestCase):
    """A captured signed message, sent again and again within its window to a
    front end of several worker processes: taken once, by one of them."""

    def test_a_replayed_message_is_refused_by_every_worker(self):
        server = StoreServer.running(CONFIGURATION + '\n[cluster]\nsecret = %s\n' % SECRET, workers=3, threads=2)
        self.addCleanup(server.cleanup)
        self.addCleanup(server.stop)
        now = time.time()
        body = json.dumps({'partitions': {'p1': {'state': 'up', 'since': now - 60, 'observed': now,
                                                 'last_error': None}}}).encode()
        headers = dict(gossip.signed_headers(SECRET, gossip.REQUEST, '127.0.0.1:%d' % server.port, body),
                       **{'Content-Type': 'application/json'})
        statuses = []
        for _ in range(12):
            conn = server.connect()
            try:
                conn.request('POST', '/cluster/gossip', body, headers)
                response = conn.getresponse()
                answer = json.loads(response.read())
                statuses.append(response.status)
                if response.status == 403:
                    self.assertEqual(answer['code'], 'gossip_refused')
            finally:
                conn.close()
        self.assertEqual(sorted(statuses), [200] + [403] * 11)


def in_chromium(page):
    """The paths headless Chromium asked of another site (http://localhost:port,
    another site than 127.0.0.1) while showing its page: page(site) is its HTML."""
    browser = shutil.which('chromium') or shutil.which('chromium-browser')
    if browser is None:
        raise unittest.SkipTest('chromium is not installed (make browser, or apt-get install chromium)')
    seen, html = [], []

    class AttackerSite(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = html[0] if self.path == '/attack.html' else b''
            self.send_response(200)
            self.send_header('Content-Type', 'text/html')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(('127.0.0.1', 0), AttackerSite)
    origin = 'http://localhost:%d' % site.server_address[1]
    html.append(page(origin).encode())
    threading.Thread(target=site.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix='kvstore-chromium-')
    try:
        subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', '--user-data-dir=' + profile,
                        '--virtual-time-budget=5000', '--dump-dom', origin + '/attack.html'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    finally:
        site.shutdown()
        site.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return seen
