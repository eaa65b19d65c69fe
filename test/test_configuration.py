"""Reading and checking the configuration (configuration.py, serve.py).

A good configuration loads; a bad one stops startup with ONE line naming the
section and the field.  Under WEBPY_ENV=test MySQL database names get the
prefix `test_`, so a test run never touches real data.
"""
import configparser
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import unittest

from test import support
from test.server import serve_command

from kvstore import configuration
from kvstore.configuration import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STORE = """
[store]
replicas = 3
r = 2
w = 2
"""


def mysql_partitions(count=4, **fields):
    """`count` MySQL partitions p1, p2, ...; fields override their settings."""
    text = ''
    for i in range(1, count + 1):
        settings = dict(engine='mysql', host='127.0.0.1', port='3306', user='kvstore',
                        database='kvstore_p%d' % i)
        settings.update(fields)
        text += '\n[partition-p%d]\n' % i + ''.join('%s = %s\n' % item for item in settings.items())
    return text






class ConfigurationTestCase(unittest.TestCase):

    def setUp(self):
        self.saved_environ = dict(os.environ)
        self.directory = tempfile.mkdtemp(prefix='kvstore-config-')

    def tearDown(self):
        os.environ.clear()
        os.environ.update(self.saved_environ)
        shutil.rmtree(self.directory, ignore_errors=True)

    def parse(self, text):
        parser = configparser.ConfigParser()
        parser.read_string(textwrap.dedent(text))
        return configuration.parse(parser, os.path.join(self.directory, 'configuration.cfg'))

    def write(self, text, name='configuration.cfg'):
        path = os.path.join(self.directory, name)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(textwrap.dedent(text))
        return path

    def assertConfigError(self, text, section, field):
        """parse(text) fails with one line naming `[section] field`."""
        with self.assertRaises(ConfigError) as caught:
            self.parse(text)
        message = str(caught.exception)
        self.assertNotIn('\n', message)
        self.assertIn('[%s] %s' % (section, field), message)
        return message


class TestGoodConfigurations(ConfigurationTestCase):

    def test_the_shipped_configuration_loads_four_sqlite_partitions(self):
        # A copy, so that the data/ directory it names is made in a temporary
        # directory and not in the work tree: its paths are relative to the file.
        path = os.path.join(self.directory, 'configuration.cfg')
        shutil.copy(os.path.join(REPO, 'configuration.cfg'), path)
        config = configuration.load(path)
        self.assertEqual((config.replicas, config.r, config.w), (3, 2, 2))
        self.assertEqual([p.name for p in config.partitions], ['p1', 'p2', 'p3', 'p4'])
        for p in config.partitions:
            self.assertEqual(p.engine, 'sqlite')
            self.assertEqual(p.path, os.path.join(self.directory, 'data', '%s.sqlite3' % p.name))
        self.assertTrue(os.path.isdir(os.path.join(self.directory, 'data')))
        self.assertEqual(config.key_length, 1024)
        self.assertEqual(config.source, path)

    def test_the_shipped_mariadb_configuration_loads_four_mysql_partitions(self):
        config = configuration.load(os.path.join(REPO, 'configuration.mariadb.cfg'))
        self.assertEqual([p.name for p in config.partitions], ['p1', 'p2', 'p3', 'p4'])
        self.assertEqual({p.engine for p in config.partitions}, {'mysql'})
        self.assertEqual(config.partitions[0].host, '10.0.0.11')
        self.assertEqual(config.partitions[0].port, 3306)
        self.assertEqual(config.partitions[0].user, 'kvstore')

    def test_store_config_names_the_file_to_load(self):
        path = self.write(STORE + mysql_partitions(3))
        os.environ['STORE_CONFIG'] = path
        self.assertEqual(configuration.config_path(), path)
        self.assertEqual(len(configuration.load().partitions), 3)

    def test_without_store_config_the_embedded_default_is_used(self):
        os.environ.pop('STORE_CONFIG', None)
        self.assertEqual(configuration.config_path(), os.path.join(REPO, 'configuration.cfg'))

    def test_quorums_default_to_a_majority_of_replicas(self):
        config = self.parse('[store]\nreplicas = 3\n' + mysql_partitions(4))
        self.assertEqual((config.r, config.w), (2, 2))
        config = self.parse('[store]\nreplicas = 4\n' + mysql_partitions(4))
        self.assertEqual((config.r, config.w), (3, 3))

    def test_sqlite_paths_are_relative_to_the_configuration_file(self):
        config = self.parse(STORE + ''.join(
            '\n[partition-p%d]\nengine = sqlite\npath = nested/dir/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3)))
        self.assertEqual(config.partitions[0].path,
                         os.path.join(self.directory, 'nested', 'dir', 'p1.sqlite3'))
        self.assertTrue(os.path.isdir(os.path.join(self.directory, 'nested', 'dir')))

    def test_a_partition_weight_is_read(self):
        config = self.parse(STORE + mysql_partitions(3) + '\n[partition-big]\nengine = mysql\n'
                            'user = u\ndatabase = d\nweight = 2.5\n')
        self.assertEqual({p.name: p.weight for p in config.partitions},
                         {'p1': 1.0, 'p2': 1.0, 'p3': 1.0, 'big': 2.5})


class TestTestDatabaseNames(ConfigurationTestCase):

    def test_under_webpy_env_test_mysql_database_names_get_the_test_prefix(self):
        os.environ['WEBPY_ENV'] = 'test'
        config = self.parse(STORE + mysql_partitions(3))
        self.assertEqual([p.database for p in config.partitions],
                         ['test_kvstore_p1', 'test_kvstore_p2', 'test_kvstore_p3'])

    def test_the_shipped_mariadb_configuration_uses_test_databases_under_webpy_env_test(self):
        os.environ['WEBPY_ENV'] = 'test'
        config = configuration.load(os.path.join(REPO, 'configuration.mariadb.cfg'))
        self.assertEqual([p.database for p in config.partitions],
                         ['test_kvstore_p1', 'test_kvstore_p2', 'test_kvstore_p3', 'test_kvstore_p4'])

    def test_without_webpy_env_database_names_are_used_as_written(self):
        os.environ.pop('WEBPY_ENV', None)
        config = self.parse(STORE + mysql_partitions(3))
        self.assertEqual([p.database for p in config.partitions],
                         ['kvstore_p1', 'kvstore_p2', 'kvstore_p3'])

    def test_other_webpy_environments_use_database_names_as_written(self):
        for environment in ('development', 'production', 'testing', ''):
            os.environ['WEBPY_ENV'] = environment
            config = self.parse(STORE + mysql_partitions(3))
            self.assertEqual(config.partitions[0].database, 'kvstore_p1', environment)


class TestBadConfigurations(ConfigurationTestCase):
    """Each mistake is one line naming the section and the field."""

    def test_more_replicas_than_partitions_is_refused(self):
        message = self.assertConfigError('[store]\nreplicas = 5\n' + mysql_partitions(4), 'store', 'replicas')
        self.assertIn('5', message)

    def test_a_read_quorum_of_zero_is_refused(self):
        self.assertConfigError('[store]\nreplicas = 3\nr = 0\n' + mysql_partitions(4), 'store', 'r:')

    def test_a_write_quorum_above_the_replicas_is_refused(self):
        self.assertConfigError('[store]\nreplicas = 3\nw = 4\n' + mysql_partitions(4), 'store', 'w:')

    def test_an_unknown_engine_is_refused(self):
        message = self.assertConfigError(STORE + mysql_partitions(3) + '\n[partition-p9]\nengine = oracle\n',
                                         'partition-p9', 'engine')
        self.assertIn('oracle', message)

    def test_a_partition_without_an_engine_is_refused(self):
        self.assertConfigError(STORE + mysql_partitions(3) + '\n[partition-p9]\npath = x.sqlite3\n',
                               'partition-p9', 'engine')

    def test_a_sqlite_path_whose_directory_cannot_be_created_is_refused(self):
        blocker = os.path.join(self.directory, 'a-regular-file')
        with open(blocker, 'w') as f:
            f.write('not a directory')
        message = self.assertConfigError(
            STORE + mysql_partitions(3) + '\n[partition-p9]\nengine = sqlite\npath = %s\n'
            % os.path.join(blocker, 'data', 'p9.sqlite3'), 'partition-p9', 'path')
        self.assertIn('cannot be created', message)

    def test_a_sqlite_partition_without_a_path_is_refused(self):
        self.assertConfigError(STORE + mysql_partitions(3) + '\n[partition-p9]\nengine = sqlite\n',
                               'partition-p9', 'path')

    def test_a_missing_store_section_is_refused(self):
        message = self.assertConfigError(mysql_partitions(4), 'store', '')
        self.assertIn('missing', message)

    def test_a_configuration_without_partitions_is_refused(self):
        message = self.assertConfigError(STORE, 'partition-NAME', 'section')
        self.assertIn('no partitions', message)

    def test_a_key_length_above_1024_is_refused(self):
        message = self.assertConfigError('[store]\nreplicas = 3\nkey_length = 1025\n' + mysql_partitions(4),
                                         'store', 'key_length')
        self.assertIn('1024', message)

    def test_a_non_numeric_port_is_refused(self):
        message = self.assertConfigError(STORE + mysql_partitions(3, port='mysql'), 'partition-p1', 'port')
        self.assertIn("'mysql'", message)

    def test_a_non_numeric_replica_count_is_refused(self):
        self.assertConfigError('[store]\nreplicas = three\n' + mysql_partitions(4), 'store', 'replicas')

    def test_a_mysql_partition_without_a_database_is_refused(self):
        self.assertConfigError(STORE + mysql_partitions(3) + '\n[partition-p9]\nengine = mysql\nuser = u\n',
                               'partition-p9', 'database')

    def test_a_chunk_grace_of_zero_is_refused(self):
        # gc would remove the chunks of every upload under way.
        message = self.assertConfigError(STORE + mysql_partitions(3) + '\n[sync]\nchunk_grace = 0\n',
                                         'sync', 'chunk_grace')
        self.assertIn('at least 1', message)

    def test_a_partition_name_with_other_characters_is_refused(self):
        self.assertConfigError(STORE + mysql_partitions(3) + '\n[partition-p 9]\nengine = mysql\n',
                               'partition-p 9', 'name')

    def test_the_error_names_the_file_it_came_from(self):
        path = self.write('[store]\nreplicas = 5\n' + mysql_partitions(4), name='mine.cfg')
        with self.assertRaises(ConfigError) as caught:
            configuration.load(path)
        message = str(caught.exception)
        self.assertNotIn('\n', message)
        self.assertTrue(message.startswith('mine.cfg [store] replicas: '), message)

    def test_a_missing_file_is_one_line_naming_it(self):
        path = os.path.join(self.directory, 'absent.cfg')
        with self.assertRaises(ConfigError) as caught:
            configuration.load(path)
        message = str(caught.exception)
        self.assertNotIn('\n', message)
        self.assertIn(path, message)

    def test_a_file_that_is_not_ini_syntax_is_one_line_naming_it(self):
        path = self.write('replicas = 3\n[store\n')
        with self.assertRaises(ConfigError) as caught:
            configuration.load(path)
        message = str(caught.exception)
        self.assertNotIn('\n', message)
        self.assertIn(path, message)


class TestServerRefusesABadConfiguration(ConfigurationTestCase):
    """serve.py checks the configuration before Granian starts any worker: it
    exits with status 2 and one clear line."""

    def test_serve_exits_with_one_line_naming_the_bad_field(self):
        path = self.write('[store]\nreplicas = 5\n' + ''.join(
            '\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i) for i in (1, 2, 3, 4)))
        env = dict(os.environ, STORE_CONFIG=path, BIND='127.0.0.1:%d' % support.free_port())
        process = subprocess.Popen(serve_command(), cwd=REPO, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            self.fail('serve.py was still running after 30 s with a bad configuration')
        stderr = stderr.decode('utf-8', 'replace')
        self.assertEqual(process.returncode, 2, stderr)
        lines = [line for line in stderr.splitlines() if line.startswith('configuration error:')]
        self.assertEqual(len(lines), 1, stderr)
        self.assertIn('[store] replicas', lines[0])
        self.assertIn('configuration.cfg', lines[0])
        self.assertNotIn('Traceback', stderr)
        # No worker started, so no partition was opened.
        self.assertFalse(os.path.exists(os.path.join(self.directory, 'data', 'p1.sqlite3')))

    def test_check_says_whether_a_configuration_is_good_and_starts_nothing(self):
        good = self.write('[store]\n' + ''.join('\n[partition-p%d]\nengine = sqlite\npath = data/p%d.sqlite3\n' % (i, i)
                                  for i in (1, 2, 3)))
        checked = subprocess.run(serve_command() + ['--check'], cwd=REPO, env=dict(os.environ, STORE_CONFIG=good),
                                 capture_output=True, text=True, timeout=30)
        self.assertEqual((checked.returncode, checked.stdout.strip()), (0, 'configuration OK: %s' % good))
        bad = self.write('[store]\nreplicas = 5\n')
        checked = subprocess.run(serve_command() + ['--check'], cwd=REPO, env=dict(os.environ, STORE_CONFIG=bad),
                                 capture_output=True, text=True, timeout=30)
        self.assertEqual(checked.returncode, 2, checked.stderr)
        self.assertTrue(checked.stderr.startswith('configuration error:'), checked.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.directory, 'data', 'p1.sqlite3')))


if __name__ == '__main__':
    unittest.main()
