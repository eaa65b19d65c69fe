"""The store's MariaDB user as docs/OPERATIONS.md creates it.

The harness (mariadb_server.py) runs the documented CREATE USER and GRANT on
every private server, with the test names put in: the host 127.0.0.1 for the
documented network, and every `test_` database (WEBPY_ENV=test's prefix) for
kvstore_p1.  The store's partitions in the tests connect as that user
(support.mariadb_partitions), so a statement the documented grants do not
allow fails the suite.
"""
import os
import re

DOCUMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'OPERATIONS.md')
DOCUMENTED_DATABASE = 'kvstore_p1.*'
DOCUMENTED_ACCOUNT = "'kvstore'@'10.0.0.%'"
TEST_DATABASES = '`test\\_%`.*'
TEST_HOST = '127.0.0.1'


def documented_statements(path=DOCUMENT):
    """(CREATE USER, GRANT) as the document's sql block has them."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    create = re.search(r"^\s*(CREATE USER .+;)\s*$", text, re.M)
    grant = re.search(r"^\s*(GRANT .+;)\s*$", text, re.M)
    if not (create and grant):
        raise ValueError('%s has no CREATE USER and GRANT lines' % path)
    return create.group(1), grant.group(1)


def documented_privileges(path=DOCUMENT):
    """The privileges the documented GRANT gives, as a set of names."""
    grant = documented_statements(path)[1]
    return {p.strip().upper() for p in re.match(r'GRANT (.+?) ON ', grant).group(1).split(',')}


def store_account():
    """(user, password) the documented CREATE USER makes."""
    create = documented_statements()[0]
    found = re.match(r"CREATE USER '([^']+)'@'[^']+' IDENTIFIED BY '([^']*)';", create)
    return found.group(1), found.group(2)


def store_user_sql(path=DOCUMENT):
    """The documented statements for a private test server: idempotent, run
    by its init file at every start."""
    create, grant = documented_statements(path)
    account = "'%s'@'%s'" % (store_account()[0], TEST_HOST)
    for statement in (create, grant):
        if DOCUMENTED_ACCOUNT not in statement:
            raise ValueError('%s: %s does not name %s' % (path, statement, DOCUMENTED_ACCOUNT))
    create = create.replace('CREATE USER ', 'CREATE USER IF NOT EXISTS ').replace(DOCUMENTED_ACCOUNT, account)
    grant = grant.replace(DOCUMENTED_DATABASE, TEST_DATABASES).replace(DOCUMENTED_ACCOUNT, account)
    return '%s\n%s\n' % (create, grant)


def without_privilege(server, user, privilege='UPDATE'):
    """Create user (password 'pw') on server with the documented grants but
    privilege, as the documents gave them before: a partition that connects
    as it refuses what needs privilege.  Returns its partition fields."""
    granted = ', '.join(sorted(documented_privileges() - {privilege}))
    run_as_root(server, ["CREATE USER IF NOT EXISTS '%s'@'%s' IDENTIFIED BY 'pw'" % (user, TEST_HOST),
                         "GRANT %s ON %s TO '%s'@'%s'" % (granted, TEST_DATABASES.replace('%', '%%'), user, TEST_HOST)])
    return {'user': user, 'password': 'pw'}


def drop_user(server, user):
    run_as_root(server, ["DROP USER IF EXISTS '%s'@'%s'" % (user, TEST_HOST)])


def run_as_root(server, statements):
    conn = server.connect()
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()
