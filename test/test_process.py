"""The server process, as an attacker on the same machine and an operator see it."""
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

from test.server import REPO, StoreServer, children, pid_alive
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


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
                   RUN_AS=os.environ.get('RUN_AS', 'root'),
                   STORE_CONFIG=config, BIND='127.0.0.1:%d' % self.port, WORKERS='2', THREADS='2')
        self.supervisord = subprocess.Popen(
            [sys.executable, '-m', 'supervisor.supervisord', '-c', os.path.join(REPO, 'deploy', 'supervisord.conf')],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)

    def tearDown(self):
        for pid in children(self.supervisord.pid):   # a master, leading its group
            self.addCleanup(kill_group, pid)
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
        # WORKERS workers, each started once the master listens.
        self.assertTrue(wait_until(lambda: len(children(master[0])) == 2, 30), children(master[0]))
        workers = children(master[0])
        os.kill(master[0], signal.SIGKILL)
        # Nothing of it lives on beside the master started next.
        self.assertTrue(wait_until(lambda: not any(pid_alive(pid) for pid in workers), 5),
                        'processes of the killed master live on')
        self.assertTrue(wait_until(lambda: not self.served(), 10), 'the port stayed open')
        self.assertTrue(wait_until(self.served, 60), 'the port was not served again')
        self.assertNotEqual(children(self.supervisord.pid), master)

    def test_supervisorctl_as_its_header_says_controls_it(self):
        self.assertTrue(wait_until(self.served, 60), 'the supervised server never answered')
        # The operator's shell has KVSTORE_RUN alone of supervisord's variables.
        env = dict({k: v for k, v in os.environ.items() if not k.startswith('KVSTORE_')}, KVSTORE_RUN=self.run_dir)

        def status():
            return subprocess.run([sys.executable, '-m', 'supervisor.supervisorctl', '-c',
                                   os.path.join(REPO, 'deploy', 'supervisord.conf'), 'status', 'kvstore'],
                                  env=env, capture_output=True, text=True, timeout=30)
        # RUNNING once it has lived startsecs.
        self.assertTrue(wait_until(lambda: status().stdout.split()[:2] == ['kvstore', 'RUNNING'], 30),
                        status().stdout + status().stderr)
        with open(os.path.join(REPO, 'deploy', 'supervisord.conf')) as f:
            self.assertIn('KVSTORE_RUN=/var/lib/kvstore/supervisor supervisorctl -c deploy/supervisord.conf', f.read())


class TestSignals(unittest.TestCase):
    def setUp(self):
        self.server = StoreServer(CONFIGURATION)
        self.server.start()
        self.addCleanup(self.server.cleanup)
        self.addCleanup(self.server.stop)

    def test_sigterm_lets_a_request_under_way_finish_then_exits(self):
        conn = self.server.connect(timeout=30)
        conn.putrequest('PUT', '/buckets/b/keys/slow')
        conn.putheader('Content-Type', 'text/plain')
        conn.putheader('Content-Length', '10')
        conn.endheaders()
        conn.send(b'01234')
        time.sleep(0.5)   # the request is with a worker now
        os.kill(self.server.process.pid, signal.SIGTERM)
        time.sleep(0.5)
        conn.send(b'56789')
        self.assertEqual(conn.getresponse().status, 201)
        self.server.process.wait(20)

    def test_sighup_reloads_the_configuration(self):
        self.assertEqual(self.index()['r'], 2)
        with open(self.server.config_path, 'w') as f:
            f.write(CONFIGURATION.replace('r = 2', 'r = 1'))
        os.kill(self.server.process.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: (self.index() or {}).get('r') == 1, 30))

    def test_workers_killed_one_after_another_are_started_again(self):
        # The same worker killed three times, each within seconds of its
        # start: the master starts it again each time and goes on serving.
        for _ in range(3):
            victim = max(self.server.worker_pids())   # the one started last
            os.kill(victim, signal.SIGKILL)
            self.assertTrue(wait_until(lambda: victim not in self.server.worker_pids()
                                       and len(self.server.worker_pids()) == self.server.workers, 15))
        self.assertIsNone(self.server.process.poll(), self.server.log())
        self.assertTrue(wait_until(lambda: self.server.answers(), 15), self.server.log())

    def index(self):
        conn = self.server.connect()
        try:
            conn.request('GET', '/')
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return None
        finally:
            conn.close()

    def test_sighup_with_a_bad_configuration_keeps_serving_the_old_one_and_says_why(self):
        # nginx's and HAProxy's way: check first, keep the old one when the new one is bad.
        self.assertEqual(self.index()['r'], 2)
        with open(self.server.config_path, 'w') as f:
            f.write(CONFIGURATION.replace('r = 2', 'r = many'))
        os.kill(self.server.process.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: 'not reloaded' in self.server.log(), 10), self.server.log())
        self.assertIn('r', self.server.log().split('not reloaded', 1)[1].split('\n', 1)[0])
        for _ in range(20):   # every worker still serves the old configuration
            self.assertEqual((self.index() or {}).get('r'), 2, self.server.log())
        self.assertIsNone(self.server.process.poll())
        # Mended, the next SIGHUP reloads it.
        with open(self.server.config_path, 'w') as f:
            f.write(CONFIGURATION.replace('r = 2', 'r = 1'))
        os.kill(self.server.process.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: (self.index() or {}).get('r') == 1, 30))

    def test_sighup_answers_every_request_in_flight(self):
        # Nine writes under way (their bodies half sent) when SIGHUP comes:
        # each is answered by the worker that took it, and stored.
        conns = []
        for i in range(9):
            conn = self.server.connect(timeout=30)
            conn.putrequest('PUT', '/buckets/b/keys/in-flight-%d' % i)
            conn.putheader('Content-Type', 'text/plain')
            conn.putheader('Content-Length', '10')
            conn.endheaders()
            conn.send(b'01234')
            conns.append(conn)
        time.sleep(0.5)   # the requests are with the workers now
        with open(self.server.config_path, 'w') as f:
            f.write(CONFIGURATION.replace('r = 2', 'r = 1'))
        os.kill(self.server.process.pid, signal.SIGHUP)
        time.sleep(0.5)
        statuses = []
        for conn in conns:
            conn.send(b'56789')
        for conn in conns:
            try:
                statuses.append(conn.getresponse().status)
            except (OSError, http.client.HTTPException) as e:
                statuses.append(repr(e))
            conn.close()
        self.assertEqual(statuses, [201] * 9)
        for i in range(9):
            conn = self.server.connect()
            conn.request('GET', '/buckets/b/keys/in-flight-%d' % i)
            response = conn.getresponse()
            self.assertEqual((response.status, response.read()), (200, b'0123456789'))
            conn.close()
        self.assertTrue(wait_until(lambda: (self.index() or {}).get('r') == 1, 30))


class TestMasterKilledWhileWorkersLoad(unittest.TestCase):
    def test_workers_still_loading_exit_with_their_master(self):
        directory = tempfile.mkdtemp(prefix='kvstore-slow-')
        self.addCleanup(shutil.rmtree, directory, True)
        with open(os.path.join(directory, 'slow.py'), 'w') as f:
            f.write('import time\n'
                    'time.sleep(3)   # a worker loading a large application\n'
                    'def application(environ, start_response):\n'
                    '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
                    '    return [b"ok"]\n')
        env = dict(os.environ, BIND='127.0.0.1:%d' % free_port(), WORKERS='2', PYTHONPATH=directory,
                   RUN_AS=os.environ.get('RUN_AS', 'root'))
        process = subprocess.Popen([sys.executable, os.path.join(REPO, 'serve.py'), 'slow:application'], env=env,
                                   cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(kill_group, process.pid)
        self.assertTrue(wait_until(lambda: len(children(process.pid)) == 2, 30))
        workers = children(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.assertTrue(wait_until(lambda: not any(pid_alive(pid) for pid in workers), 10),
                        'workers of the killed master live on')


@unittest.skipUnless(os.geteuid() == 0, 'only root can start the server as root')
class TestStartedAsRoot(unittest.TestCase):
    def run_serve(self, env, app=None):
        command = [sys.executable, os.path.join(REPO, 'serve.py')] + ([app] if app else [])
        return subprocess.Popen(command, env=env, cwd=self.directory, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix='kvstore-root-')
        os.chmod(self.directory, 0o755)
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.port = free_port()
        with open(os.path.join(self.directory, 'configuration.cfg'), 'w') as f:
            f.write(CONFIGURATION)
        self.env = dict(os.environ, BIND='127.0.0.1:%d' % self.port,
                        STORE_CONFIG=os.path.join(self.directory, 'configuration.cfg'))
        self.env.pop('RUN_AS', None)

    def test_without_run_as_it_refuses_and_says_how_to_fix_it(self):
        process = self.run_serve(self.env)
        output = process.communicate(timeout=30)[0].decode()
        self.assertEqual(process.returncode, 2, output)
        self.assertIn('RUN_AS', output)

    def test_with_run_as_every_process_runs_as_that_user(self):
        # An application that imports nothing: this machine's Python may live
        # where the user cannot read (a pyenv under /root).
        with open(os.path.join(self.directory, 'whoami.py'), 'w') as f:
            f.write('import os\n'
                    'def application(environ, start_response):\n'
                    '    start_response("200 OK", [("Content-Type", "text/plain")])\n'
                    '    return [str(os.geteuid()).encode()]\n')
        process = self.run_serve(dict(self.env, RUN_AS='nobody', PYTHONPATH=self.directory), 'whoami:application')
        try:
            def answer():
                conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
                try:
                    conn.request('GET', '/')
                    return conn.getresponse().read()
                except OSError:
                    return None
                finally:
                    conn.close()
            self.assertTrue(wait_until(answer, 30), 'the server did not answer')
            self.assertEqual(answer(), str(pwd.getpwnam('nobody').pw_uid).encode())
            for pid in [process.pid] + children(process.pid):
                self.assertEqual(os.stat('/proc/%d' % pid).st_uid, pwd.getpwnam('nobody').pw_uid)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
