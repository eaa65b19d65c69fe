"""The server process, as an attacker on the same machine and an operator see it."""
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import unittest

from test.server import REPO, StoreServer, children
from test.support import free_port, wait_until
from test.test_server import CONFIGURATION


def listening_tcp_ports(pids):
    """The TCP ports (IPv4 and IPv6) that the processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir('/proc/%d/fd' % pid):
                target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
                if target.startswith('socket:['):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == '0A' and fields[9] in inodes:   # LISTEN
                    ports.add(int(fields[1].rsplit(':', 1)[1], 16))
    return sorted(ports)


def uwsgi_packet(variables):
    """A request in uWSGI's own binary protocol (modifier 0: WSGI)."""
    body = b''.join(struct.pack('<H', len(k)) + k + struct.pack('<H', len(v)) + v
                    for k, v in ((k.encode(), v.encode()) for k, v in variables.items()))
    return struct.pack('<BHB', 0, len(body), 0) + body


class TestNoInternalProtocolOnTheNetwork(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = StoreServer(CONFIGURATION)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def test_no_tcp_port_of_the_server_speaks_uwsgi_or_loads_a_file(self):
        marker = tempfile.mktemp(prefix='kvstore-pwned-')
        with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as script:
            script.write('open(%r, "w").write("ran")\n'
                         'def application(environ, start_response):\n'
                         '    start_response("200 OK", [])\n'
                         '    return [b"pwned"]\n' % marker)
        self.addCleanup(os.unlink, script.name)
        pids = {self.server.process.pid} | set(children(self.server.process.pid))
        ports = listening_tcp_ports(pids)
        self.assertIn(self.server.port, ports)
        packet = uwsgi_packet({'REQUEST_METHOD': 'GET', 'PATH_INFO': '/', 'REQUEST_URI': '/',
                               'QUERY_STRING': '', 'SERVER_PROTOCOL': 'HTTP/1.1', 'SERVER_NAME': 'x',
                               'SERVER_PORT': '80', 'HTTP_HOST': 'x', 'UWSGI_FILE': script.name,
                               'UWSGI_APPID': 'pwned'})
        for port in ports:
            with socket.create_connection(('127.0.0.1', port), timeout=5) as sock:
                sock.sendall(packet)
                answer = b''
                try:
                    while len(answer) < 4096:
                        data = sock.recv(4096)
                        if not data:
                            break
                        answer += data
                except socket.timeout:
                    pass
            # The HTTP port may answer 400 to a packet that is not HTTP; no
            # port may run the request.
            self.assertNotIn(b'200 OK', answer, 'port %d speaks uWSGI' % port)
            self.assertNotIn(b'pwned', answer)
        self.assertFalse(os.path.exists(marker), 'a uWSGI packet made a worker run a file')


class TestSupervised(unittest.TestCase):
    """deploy/supervisord.conf, as shipped, under a real supervisord."""

    def setUp(self):
        self.run_dir = tempfile.mkdtemp(prefix='kvstore-supervised-')
        config = os.path.join(self.run_dir, 'configuration.cfg')
        with open(config, 'w') as f:
            f.write(CONFIGURATION)
        self.port = free_port()
        env = dict(os.environ, KVSTORE_HOME=REPO, KVSTORE_PYTHON=sys.executable, KVSTORE_RUN=self.run_dir,
                   STORE_CONFIG=config, BIND='127.0.0.1:%d' % self.port, WORKERS='2', THREADS='2')
        self.supervisord = subprocess.Popen(
            [sys.executable, '-m', 'supervisor.supervisord', '-c', os.path.join(REPO, 'deploy', 'supervisord.conf')],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)

    def tearDown(self):
        self.supervisord.terminate()   # supervisord stops its program's whole group
        try:
            self.supervisord.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.supervisord.pid, signal.SIGKILL)
            self.supervisord.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def served(self):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
        try:
            conn.request('GET', '/health')
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def test_a_killed_master_is_started_again_and_serves_the_port(self):
        self.assertTrue(wait_until(self.served, 60), 'the supervised server never answered')
        master = children(self.supervisord.pid)
        self.assertEqual(len(master), 1)
        os.kill(master[0], signal.SIGKILL)
        self.assertTrue(wait_until(lambda: not self.served(), 10), 'the port stayed open')
        self.assertTrue(wait_until(self.served, 60), 'the port was not served again')
        self.assertNotEqual(children(self.supervisord.pid), master)
