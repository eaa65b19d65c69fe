"""The kv command (kvstore/cli/) as a user runs it: the installed
.venv/bin/kv, a subprocess, against the real server (serve.py under Granian)
with tokens configured."""
import email.utils
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from test import support
from test.server import REPO, StoreServer
from test.test_access import token_section

# The kv that `make venv` installed beside the Python running the tests.
KV = os.path.join(os.path.dirname(sys.executable), 'kv')
TOKENS = {'admin': 'admin:*', 'reader': 'read:*'}
MIB = 1024 * 1024


class TestKv(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(KV):
            raise AssertionError('%s is missing: `make venv` installs it (pip install -e .)' % KV)
        cls.directory = support.TemporaryDirectory()
        sections = {'token-%s' % name: token_section('tok-' + name, roles) for name, roles in TOKENS.items()}
        text = support.config_text(support.sqlite_partitions(cls.directory.path), sections,
                                   max_value_bytes=64 * MIB)
        cls.server = StoreServer.running(text, workers=1, threads=4)
        cls.url = 'http://127.0.0.1:%d' % cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()
        cls.directory.remove()

    def setUp(self):
        self.bucket = support.unique()
        self.work = tempfile.mkdtemp(prefix='kv-test-')
        self.addCleanup(shutil.rmtree, self.work, True)

    def kv(self, *args, input=b'', token='admin', url=None, expect=0):
        """Runs kv; returns (stdout bytes, stderr text) after checking its exit status."""
        env = {k: v for k, v in os.environ.items() if k not in ('KV_URL', 'KV_TOKEN')}
        env['KV_URL'] = url or self.url
        env['PYTHONPATH'] = REPO   # this checkout's kv, whichever the virtualenv's script was installed from
        if token:
            env['KV_TOKEN'] = 'tok-' + token
        done = subprocess.run([KV] + list(args), input=input, env=env, capture_output=True, timeout=60)
        stderr = done.stderr.decode('utf-8', 'replace')
        self.assertEqual(done.returncode, expect, 'kv %s: %s' % (' '.join(args), stderr))
        return done.stdout, stderr

    def path(self, name, data=None):
        path = os.path.join(self.work, name)
        if data is not None:
            with open(path, 'wb') as f:
                f.write(data)
        return path

    # -- values ----------------------------------------------------------------------

    def test_put_from_a_file_and_get_to_stdout_are_byte_exact(self):
        value = os.urandom(3 * MIB + 17)   # several 1 MiB chunks, and a partial one
        etag, _ = self.kv('put', self.bucket, 'blob.bin', self.path('in', value))
        described = json.loads(self.kv('get', self.bucket, 'blob.bin', '-o', self.path('copy'), '--json')[0])
        self.assertEqual(etag.decode().strip(), described['etag'])
        out, _ = self.kv('get', self.bucket, 'blob.bin')
        self.assertEqual(hashlib.sha256(out).hexdigest(), hashlib.sha256(value).hexdigest())
        self.assertEqual(len(out), len(value))

    def test_put_from_stdin_and_get_to_a_file(self):
        value = os.urandom(2 * MIB + 5)    # a pipe: no size known, sent chunked
        etag = self.kv('put', self.bucket, 'piped', '-', '--type', 'image/png', input=value)[0].decode().strip()
        target = self.path('out')
        out, _ = self.kv('get', self.bucket, 'piped', '-o', target, '--json')
        with open(target, 'rb') as f:
            self.assertEqual(f.read(), value)
        described = json.loads(out)
        self.assertEqual((described['size'], described['content_type']), (len(value), 'image/png'))
        self.assertEqual(described['etag'], etag)

    def test_put_with_a_ttl_stores_a_value_that_is_gone_after_it(self):
        # Long enough to read it back on a loaded machine (kv starts in about a second).
        brief = json.loads(self.kv('put', self.bucket, 'brief', '-', '--ttl', '8', '--json', input=b'soon gone')[0])
        self.assertEqual(self.kv('get', self.bucket, 'brief')[0], b'soon gone')
        _, err = self.kv('put', self.bucket, 'k', '-', '--ttl', '0', input=b'x', expect=7)
        self.assertIn('bad_expiry', err)
        expires = email.utils.parsedate_to_datetime(brief['expires_at']).timestamp()
        time.sleep(max(0.0, expires - time.time()) + 0.2)
        self.kv('get', self.bucket, 'brief', expect=1)

    def test_values_stream_through_kv_without_being_held_whole(self):
        value = os.urandom(24 * MIB)
        source, target = self.path('in', value), self.path('out')
        baseline = self.peak_memory('buckets')
        self.assertLess(self.peak_memory('put', self.bucket, 'big', source), baseline + 12 * MIB)
        self.assertLess(self.peak_memory('get', self.bucket, 'big', '-o', target), baseline + 12 * MIB)
        with open(target, 'rb') as f:
            self.assertTrue(f.read() == value)

    def peak_memory(self, *args):
        """The peak resident memory of kv running args, in bytes."""
        probe = ('import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, '
                 'stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')
        env = dict(os.environ, KV_URL=self.url, KV_TOKEN='tok-admin')
        done = subprocess.run([sys.executable, '-c', probe, KV] + list(args), env=env, capture_output=True,
                              timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr.decode('utf-8', 'replace'))
        return int(done.stdout) * 1024

    def test_progress_bar_only_when_asked_or_on_a_terminal(self):
        source = self.path('in', os.urandom(MIB))
        _, quiet = self.kv('put', self.bucket, 'k', source)   # stderr is a pipe here
        self.assertEqual(quiet, '')
        _, shown = self.kv('get', self.bucket, 'k', '-o', self.path('out'), '--progress')
        self.assertIn('1.00M', shown)

    def test_keys_with_dot_segments_and_escapes_are_kept_as_they_are(self):
        keys = ['a/../b', './c', 'd e/f%2Fg?h#i', 'é']
        for key in keys:
            self.kv('put', self.bucket, key, '-', input=key.encode())
        for key in keys:
            self.assertEqual(self.kv('get', self.bucket, key)[0], key.encode())
        listed = json.loads(self.kv('ls', self.bucket, '--json')[0])['keys']
        self.assertEqual(sorted(listed), sorted(keys))

    # -- read-modify-write -------------------------------------------------------------

    def test_read_modify_write_fails_with_3_when_another_writer_came_between(self):
        state = self.path('state')
        self.kv('put', self.bucket, 'counter', '-', input=b'1')
        out, _ = self.kv('get', self.bucket, 'counter', '--context-file', state)
        self.kv('put', self.bucket, 'counter', '-', input=b'7')        # a concurrent writer
        _, err = self.kv('put', self.bucket, 'counter', '-', '--context-file', state, '--if-unchanged',
                         input=str(int(out) + 1).encode(), expect=3)
        self.assertIn('precondition_failed', err)
        self.assertEqual(self.kv('get', self.bucket, 'counter')[0], b'7')
        # Read again and retry: now it holds.
        out, _ = self.kv('get', self.bucket, 'counter', '--context-file', state)
        self.kv('put', self.bucket, 'counter', '-', '--context-file', state, '--if-unchanged',
                input=str(int(out) + 1).encode())
        self.assertEqual(self.kv('get', self.bucket, 'counter')[0], b'8')

    def test_the_read_modify_write_loop_starts_with_the_key_s_first_write(self):
        state = self.path('state')
        self.kv('get', self.bucket, 'fresh', '--context-file', state, expect=1)   # no value yet: F says so
        self.kv('put', self.bucket, 'fresh', '-', '--context-file', state, '--if-unchanged', input=b'1')
        self.assertEqual(self.kv('get', self.bucket, 'fresh')[0], b'1')
        # Another loop that read the key as absent loses: the key has a value now.
        other = self.path('other')
        self.kv('get', self.bucket, 'late', '--context-file', other, expect=1)
        self.kv('put', self.bucket, 'late', '-', input=b'first')
        _, err = self.kv('put', self.bucket, 'late', '-', '--context-file', other, '--if-unchanged',
                         input=b'second', expect=3)
        self.assertIn('precondition_failed', err)
        self.assertEqual(self.kv('get', self.bucket, 'late')[0], b'first')

    def test_if_match_and_create(self):
        etag = self.kv('put', self.bucket, 'k', '-', '--create', input=b'one')[0].decode().strip()
        self.kv('put', self.bucket, 'k', '-', '--create', input=b'two', expect=3)
        self.kv('put', self.bucket, 'k', '-', '--if-match', '"%s"' % ('0' * 64), input=b'two', expect=3)
        self.kv('put', self.bucket, 'k', '-', '--if-match', etag.strip('"'), input=b'two')
        self.assertEqual(self.kv('get', self.bucket, 'k')[0], b'two')

    def test_concurrent_writes_leave_siblings_that_get_lists_with_4_and_a_put_resolves(self):
        first, second = self.path('first'), self.path('second')
        self.kv('put', self.bucket, 'cart', '-', '--type', 'text/plain', input=b'milk')
        self.kv('get', self.bucket, 'cart', '--context-file', first)
        self.kv('get', self.bucket, 'cart', '--context-file', second)
        self.kv('put', self.bucket, 'cart', '-', '--context-file', first, '--type', 'text/plain',
                input=b'milk, eggs')
        _, err = self.kv('put', self.bucket, 'cart', '-', '--context-file', second, '--type', 'text/plain',
                         input=b'milk, bread')
        self.assertIn('2 siblings', err)
        out, err = self.kv('get', self.bucket, 'cart', '--context-file', second, expect=4)
        self.assertEqual(out, b'')
        document = json.loads(self.kv('get', self.bucket, 'cart', '--json', '-o', self.path('v'), expect=4)[0])
        self.assertEqual(sorted(s['value'] for s in document['siblings']), ['milk, bread', 'milk, eggs'])
        for sibling in document['siblings']:
            self.assertIn(sibling['etag'], err)
        self.kv('put', self.bucket, 'cart', '-', '--context-file', second, input=b'milk, eggs, bread')
        self.assertEqual(self.kv('get', self.bucket, 'cart')[0], b'milk, eggs, bread')

    # -- rm, ls, buckets -----------------------------------------------------------------

    def test_rm(self):
        self.kv('put', self.bucket, 'k', '-', input=b'v')
        receipt = json.loads(self.kv('rm', self.bucket, 'k', '--json')[0])
        self.assertTrue(receipt['deleted'])
        _, err = self.kv('get', self.bucket, 'k', expect=1)
        self.assertIn('not_found', err)
        self.kv('rm', self.bucket, 'k', expect=1)

    def test_ls_with_prefix_follows_every_page_or_stops_at_limit(self):
        wanted = ['a/%d' % i for i in range(5)]
        for key in wanted + ['b/0', 'a']:
            self.kv('put', self.bucket, key, '-', input=b'v')
        out, _ = self.kv('ls', self.bucket, '--prefix', 'a/', '--page-size', '2')
        self.assertEqual(out.decode().splitlines(), wanted)
        out, err = self.kv('ls', self.bucket, '--prefix', 'a/', '--limit', '3', '--page-size', '2')
        self.assertEqual(out.decode().splitlines(), wanted[:3])
        cursor = re.search(r'--cursor (\S+)', err).group(1)
        out, err = self.kv('ls', self.bucket, '--prefix', 'a/', '--cursor', cursor)
        self.assertEqual((out.decode().splitlines(), err), (wanted[3:], ''))
        page = json.loads(self.kv('ls', self.bucket, '--prefix', 'a/', '--limit', '4', '--json')[0])
        self.assertEqual(page['keys'], wanted[:4])
        self.assertTrue(page['next_cursor'])
        self.kv('ls', support.unique(), expect=1)

    def test_batch_dump_and_load_move_a_bucket_through_batches(self):
        lines = [{'op': 'put', 'key': 'k%03d' % i, 'value': 'text %d' % i} for i in range(25)]
        lines.append({'op': 'put', 'key': 'bin', 'value_base64': 'AP8=', 'content_type': 'image/png'})
        lines.append({'op': 'put', 'key': 'k000', 'value': 'again'})   # a key twice: the next batch takes it
        source = self.path('ops.jsonl', ''.join(json.dumps(line) + '\n' for line in lines).encode())
        out, _ = self.kv('batch', self.bucket, source, '--batch-size', '10')
        results = [json.loads(line) for line in out.decode().splitlines()]
        self.assertEqual([(r['key'], r['status']) for r in results],
                         [(line['key'], 201) for line in lines[:-1]] + [('k000', 200)])
        dumped = self.path('dump.jsonl')
        self.kv('dump', self.bucket, '-o', dumped, '--batch-size', '7')
        with open(dumped, encoding='utf-8') as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual(len(rows), 26)
        self.assertEqual(rows[0], {'key': 'bin', 'content_type': 'image/png', 'value_base64': 'AP8='})
        self.assertEqual(rows[1], {'key': 'k000', 'content_type': 'text/plain; charset=utf-8', 'value': 'again'})
        copy = support.unique()
        self.kv('load', copy, dumped)
        self.assertEqual(self.kv('dump', copy)[0].decode().splitlines(), open(dumped, encoding='utf-8').read().splitlines())
        self.assertEqual(self.kv('get', copy, 'bin')[0], b'\x00\xff')
        # An operation that fails sets the exit status; the others are done.
        failing = self.path('failing.jsonl', b'{"op": "delete", "key": "missing"}\n{"op": "get", "key": "k001"}\n')
        out, _ = self.kv('batch', self.bucket, failing, expect=1)
        self.assertEqual([json.loads(line)['status'] for line in out.decode().splitlines()], [404, 200])
        self.kv('batch', self.bucket, failing, token='reader', expect=6)

    def test_watch_prints_each_change_and_resumes_from_its_cursor(self):
        self.kv('put', self.bucket, 'a', '-', input=b'1')
        self.kv('rm', self.bucket, 'a')
        cursor_file = self.path('cursor')
        out, err = self.kv('watch', self.bucket, '--since', '0', '--once', '--cursor-file', cursor_file)
        lines = [line.split('\t') for line in out.decode().splitlines()]
        self.assertEqual([(key, change) for key, _, change in lines], [('a', 'put'), ('a', 'delete')])
        self.assertIn('kv: resume with: kv watch %s --since ' % self.bucket, err)
        self.kv('put', self.bucket, 'b', '-', input=b'2')
        out, _ = self.kv('watch', self.bucket, '--once', '--cursor-file', cursor_file)   # resumes from the file
        self.assertEqual([line.split('\t')[0] for line in out.decode().splitlines()], ['b'])
        _, err = self.kv('watch', self.bucket, '--since', 'forged', '--once', expect=7)
        self.assertIn('bad_cursor', err)

    def test_buckets(self):
        self.kv('put', self.bucket, 'k', '-', input=b'v')
        self.assertIn(self.bucket, self.kv('buckets')[0].decode().splitlines())
        self.assertIn(self.bucket, json.loads(self.kv('buckets', '--json')[0])['buckets'])

    def test_status(self):
        out, _ = self.kv('status')
        self.assertRegex(out.decode(), r'ok\s+N=3 R=2 W=2')
        document = json.loads(self.kv('status', '--json')[0])
        self.assertEqual(document['health'], {'status': 'ok'})
        self.assertEqual([p['name'] for p in document['cluster']['partitions']], ['p1', 'p2', 'p3', 'p4'])

    # -- tokens, failures ----------------------------------------------------------------

    def test_tokens_are_sent_and_refusals_exit_6(self):
        self.kv('put', self.bucket, 'k', '-', input=b'v')
        _, err = self.kv('get', self.bucket, 'k', token=None, expect=6)
        self.assertIn('unauthenticated', err)
        self.kv('get', self.bucket, 'k', token='nobody', expect=6)
        self.assertEqual(self.kv('get', self.bucket, 'k', token='reader')[0], b'v')
        _, err = self.kv('put', self.bucket, 'k', '-', input=b'w', token='reader', expect=6)
        self.assertIn('forbidden', err)
        self.kv('status', token='reader', expect=6)
        # --token overrides KV_TOKEN.
        self.kv('put', self.bucket, 'k', '-', '--token', 'tok-admin', input=b'w', token='reader')

    def test_a_token_read_from_a_file_stays_out_of_the_process_list(self):
        token_file = self.path('token', b'tok-admin\n')
        for option in (['--token', '@' + token_file], ['--token-file', token_file]):
            process = subprocess.Popen([KV, 'put', self.bucket, 'k', '-'] + option, stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       env={k: v for k, v in os.environ.items() if k != 'KV_TOKEN'} | {
                                           'KV_URL': self.url})
            try:
                with open('/proc/%d/cmdline' % process.pid, 'rb') as f:
                    self.assertNotIn(b'tok-admin', f.read())   # what ps shows
                _, err = process.communicate(b'from a file', timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
            self.assertEqual(process.returncode, 0, err)
            self.assertEqual(self.kv('get', self.bucket, 'k')[0], b'from a file')
        _, err = self.kv('get', self.bucket, 'k', '--token', '@' + self.path('missing'), token=None, expect=8)
        self.assertIn('token file', err)

    def test_a_server_that_is_down_exits_5(self):
        _, err = self.kv('get', self.bucket, 'k', url='http://127.0.0.1:%d' % support.free_port(), expect=5)
        self.assertIn('cannot reach', err)
        self.assertNotIn('Traceback', err)

    def test_usage_errors_exit_2(self):
        self.kv('get', self.bucket, expect=2)
        self.kv('get', self.bucket, 'k', '--json', expect=2)    # the value would need -o
        self.kv('put', self.bucket, 'k', '--if-unchanged', expect=2)
        self.kv('ls', self.bucket, '--limit', '0', expect=2)
        self.kv('frobnicate', expect=2)

    def test_a_missing_input_file_exits_8(self):
        _, err = self.kv('put', self.bucket, 'k', self.path('absent'), expect=8)
        self.assertIn('absent', err)

    # -- locate --------------------------------------------------------------------------

    def test_locate_on_a_server_without_it_says_so_and_exits_7(self):
        # Under a path prefix this server has no /cluster/locate: an older store's 404.
        _, err = self.kv('locate', self.bucket, 'k', url=self.url + '/old-store', expect=7)
        self.assertIn('has no GET /cluster/locate', err)

    def test_locate_names_the_owners_and_their_versions(self):
        self.kv('put', self.bucket, 'k', '-', input=b'v')
        document = json.loads(self.kv('locate', self.bucket, 'k', '--json')[0])
        self.assertEqual(len(document['owners']), 3)
        out, _ = self.kv('locate', self.bucket, 'k')
        self.assertIn('owners     %s' % ' '.join(document['owners']), out.decode())
        [version] = document['replicas'][document['owners'][0]]['versions']
        self.assertEqual(version['sha256'], hashlib.sha256(b'v').hexdigest())
        self.assertIn(version['etag'], out.decode())
