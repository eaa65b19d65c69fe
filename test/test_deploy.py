"""deploy/nginx.conf as shipped: TLS in front of a real server; deploy/kvstore.service
verified."""
import configparser
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

from test.server import REPO, StoreServer
from test.test_cli import KV
from test.support import free_port, wait_until
from test.test_server import CONFIGURATION

# Where kv finds a CA bundle when --cacert does not name one: requests', curl's, OpenSSL's.
CA_VARIABLES = ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'SSL_CERT_FILE')
NGINX = shutil.which('nginx') or ('/usr/sbin/nginx' if os.path.exists('/usr/sbin/nginx') else None)


def private_ca_certificate(directory, name):
    """(the CA's certificate, a certificate for name it signed, its key) in
    directory: a private CA, as an operator makes one with openssl."""
    paths = {part: os.path.join(directory, part) for part in ('ca.pem', 'ca.key', 'cert.pem', 'key.pem', 'cert.csr',
                                                               'cert.ext')}
    with open(paths['cert.ext'], 'w') as f:
        f.write('subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n'
                'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' % name)
    for command in (['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=kvstore test CA',
                     '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
                     '-keyout', paths['ca.key'], '-out', paths['ca.pem']],
                    ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=' + name, '-keyout', paths['key.pem'],
                     '-out', paths['cert.csr']],
                    ['x509', '-req', '-in', paths['cert.csr'], '-CA', paths['ca.pem'], '-CAkey', paths['ca.key'],
                     '-CAcreateserial', '-days', '1', '-extfile', paths['cert.ext'], '-out', paths['cert.pem']]):
        subprocess.run(['openssl'] + command, check=True, cwd=directory, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return paths['ca.pem'], paths['cert.pem'], paths['key.pem']


@unittest.skipUnless(NGINX, 'nginx is not installed (Debian: apt-get install nginx-light)')
class TestBehindNginx(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.run_dir = tempfile.mkdtemp(prefix='kvstore-nginx-')
        os.chmod(cls.run_dir, 0o755)   # nginx's workers (nobody when started as root) spool bodies here
        cls.port = free_port()
        cls.ca, cert, key = private_ca_certificate(cls.run_dir, 'localhost')
        # The front end answers to the name clients use through nginx.
        cls.server = StoreServer.running(CONFIGURATION + '\n[access]\nallowed_hosts = localhost:%d\n' % cls.port)
        with open(os.path.join(REPO, 'deploy', 'nginx.conf')) as f:
            conf = f.read()
        for name, value in (('@RUN@', cls.run_dir), ('@LISTEN@', '127.0.0.1:%d' % cls.port), ('@CERT@', cert),
                            ('@KEY@', key), ('@UPSTREAM@', '127.0.0.1:%d' % cls.server.port)):
            conf = conf.replace(name, value)
        conf = conf.replace('worker_processes auto;', 'worker_processes 1;')
        path = os.path.join(cls.run_dir, 'nginx.conf')
        with open(path, 'w') as f:
            f.write(conf)
        cls.nginx = subprocess.Popen([NGINX, '-c', path, '-g', 'daemon off;'], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_until(lambda: cls.connect_raw() is not None, 20):
            cls.tearDownClass()
            raise AssertionError('nginx did not listen')

    @classmethod
    def tearDownClass(cls):
        cls.nginx.terminate()
        try:
            cls.nginx.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(cls.nginx.pid, signal.SIGKILL)
            cls.nginx.wait()
        cls.server.stop()
        cls.server.cleanup()
        shutil.rmtree(cls.run_dir, ignore_errors=True)

    @classmethod
    def connect_raw(cls):
        try:
            return socket.create_connection(('127.0.0.1', cls.port), timeout=1).close() or True
        except OSError:
            return None

    def https(self):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE   # a self-signed test certificate
        return http.client.HTTPSConnection('localhost', self.port, timeout=10, context=context)

    def test_values_go_through_tls_and_come_back(self):
        conn = self.https()
        value = os.urandom(3 * 1024 * 1024)
        conn.request('PUT', '/buckets/tls/keys/k', body=value, headers={'Content-Type': 'application/octet-stream'})
        response = conn.getresponse()
        self.assertEqual(response.status, 201, response.read())
        response.read()
        conn.request('GET', '/buckets/tls/keys/k')
        response = conn.getresponse()
        self.assertEqual((response.status, response.read()), (200, value))
        self.assertEqual(response.getheader('X-Content-Type-Options'), 'nosniff')

    def test_a_head_too_large_for_the_store_gets_an_answer(self):
        # nginx answers a head too large for it.
        # nginx answers as soon as the head outgrows its buffers and closes:
        # the head goes a piece at a time, and stops once the answer is there.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        head = b'GET /buckets/tls/keys/%s HTTP/1.1\r\nHost: localhost\r\n\r\n' % (b'k' * 40000)
        answer = b''
        with context.wrap_socket(socket.create_connection(('localhost', self.port), timeout=10),
                                 server_hostname='localhost') as sock:
            for start in range(0, len(head), 4096):
                sock.sendall(head[start:start + 4096])
                sock.settimeout(0.1)
                try:
                    answer = sock.recv(4096)
                except (ssl.SSLWantReadError, TimeoutError):
                    pass
                sock.settimeout(10)
                if answer:
                    break
            answer = answer or sock.recv(4096)
        self.assertRegex(answer.split(b'\r\n', 1)[0], rb'^HTTP/1\.1 (400|414) ')

    def test_a_foreign_host_is_still_refused(self):
        conn = self.https()
        conn.request('GET', '/buckets', headers={'Host': 'evil.example'})
        self.assertEqual(conn.getresponse().status, 421)

    def kv(self, *args, **environment):
        """kv against nginx's https URL: (exit status, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES + ('KV_URL', 'KV_TOKEN')}
        env.update(environment, KV_URL='https://localhost:%d' % self.port)
        done = subprocess.run([KV] + list(args), env=env, capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr.decode('utf-8', 'replace')

    def test_kv_trusts_a_private_ca_from_cacert_or_the_environment(self):
        status, _, stderr = self.kv('put', 'kv-tls', 'k', '-', '--type', 'text/plain')
        self.assertEqual(status, 5, stderr)
        self.assertIn('--cacert', stderr)
        self.assertIn('unable to get local issuer certificate', stderr)
        self.assertEqual(self.kv('put', 'kv-tls', 'k', os.devnull, '--cacert', self.ca, '--type', 'text/plain')[0], 0)
        for variable in CA_VARIABLES:
            status, out, stderr = self.kv('get', 'kv-tls', 'k', **{variable: self.ca})
            self.assertEqual((status, out), (0, b''), '%s: %s' % (variable, stderr))
        status, _, stderr = self.kv('get', 'kv-tls', 'k', '--cacert', os.path.join(self.run_dir, 'missing.pem'))
        self.assertEqual(status, 8, stderr)


class TestSystemdUnit(unittest.TestCase):
    """deploy/kvstore.service, as far as a machine without systemd running can
    check it: systemd-analyze verify, and that the one place it lets the server
    write is where its header tells SQLite partitions to go."""

    def test_the_unit_verifies_and_sqlite_goes_where_it_may_write(self):
        with open(os.path.join(REPO, 'deploy', 'kvstore.service')) as f:
            text = f.read()
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.read_string(text)
        service = unit['Service']
        self.assertEqual((service['ProtectSystem'], service['ReadWritePaths']), ('strict', '/var/lib/kvstore'))
        self.assertEqual(service['StateDirectory'], 'kvstore')   # made, owned by User=, at each start
        self.assertIn('path = /var/lib/kvstore/p1.sqlite3', text)
        if not shutil.which('systemd-analyze'):
            self.skipTest('systemd-analyze is not installed')
        directory = tempfile.mkdtemp(prefix='kvstore-unit-')
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, 'kvstore.service')
        with open(path, 'w') as f:   # an interpreter that exists here
            f.write(text.replace('/opt/kvstore/.venv/bin/python', sys.executable))
        checked = subprocess.run(['systemd-analyze', 'verify', '--man=no', path], capture_output=True, text=True,
                                 timeout=60)
        self.assertEqual((checked.returncode, checked.stdout + checked.stderr), (0, ''))
