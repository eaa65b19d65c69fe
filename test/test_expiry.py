"""Values that expire (issue 25): a write's ?ttl= or X-Expires-At, a bucket's
ttl, and an expired value gone on every path, on real MariaDB partitions:
reads, listings, counts and conditions; a partition that missed the write, a
hint delivered late, read repair, sync.py's repair and gc; and versions
dated by a front end whose clock runs ahead (written through the engines,
as such a front end would have stored them)."""
import email.utils
import json
import time
import unittest

import sync

from kvstore.coordinator.versions import Version, context_of, next_dot
from test import support
from test.mariadb import shared_cluster
from test.sync_support import SyncCase, bulk_load, config_of, holdings, sync_once

PLAIN = {'Content-Type': 'text/plain'}
SECOND = 10 ** 6


def wait_past(http_date):
    """Sleep until the time an X-Expires-At names has passed."""
    moment = email.utils.mktime_tz(email.utils.parsedate_tz(http_date))
    time.sleep(max(0.0, moment - time.time()) + 0.1)


def http_date(seconds):
    return email.utils.formatdate(seconds, usegmt=True)


class ApiCase(support.StoreSpecification, support.OnMariaDB, unittest.TestCase):
    def path(self, key=''):
        return '/buckets/%s/keys/%s' % (self.bucket, key) if key else '/buckets/%s/keys' % self.bucket

    def put(self, key, value, params='', headers=None, status=None):
        return self.app.put(self.path(key) + params, value, headers=dict(PLAIN, **(headers or {})), status=status)

    def error_code(self, response):
        return response.status_int, response.json['code']


class TestExpiryOverHttp(ApiCase):
    def test_a_value_past_its_ttl_is_gone_on_every_path(self):
        created = self.put('session', b'token', '?ttl=2', status=201)
        expires = created.headers['X-Expires-At']
        self.assertEqual(created.json['expires_at'], expires)
        self.put('stays', b'forever')
        read = self.app.get(self.path('session'))
        self.assertEqual((read.body, read.headers['X-Expires-At']), (b'token', expires))
        etag = read.headers['ETag']
        self.assertEqual(self.app.get(self.path('session') + '?as=record').json['expires_at'], expires)
        self.assertEqual(self.app.get(self.path() + '?details=true').json['details'][0]['expires_at'], expires)
        self.assertNotIn('X-Expires-At', self.app.get(self.path('stays')).headers)
        wait_past(expires)

        self.assertEqual(self.error_code(self.app.get(self.path('session'), status=404)), (404, 'not_found'))
        self.assertEqual(self.app.head(self.path('session'), status=404).status_int, 404)
        self.assertEqual(self.app.get(self.path()).json['keys'], ['stays'])
        self.assertEqual([d['key'] for d in self.app.get(self.path() + '?details=true').json['details']], ['stays'])
        self.assertEqual(self.app.get('/buckets/%s?count=true' % self.bucket).json['key_count'], 1)
        self.assertEqual(self.error_code(self.app.delete(self.path('session'), status=404)), (404, 'not_found'))
        self.assertEqual(self.error_code(self.put('session', b'cas', headers={'If-Match': etag}, status=412)),
                         (412, 'precondition_failed'))
        again = self.put('session', b'new token', headers={'If-None-Match': '*'}, status=201)
        self.assertNotIn('X-Expires-At', again.headers)
        self.assertEqual(self.app.get(self.path('session')).body, b'new token')

    def test_a_bucket_holding_only_expired_values_is_not_listed(self):
        self.put('brief', b'x', '?ttl=1')
        self.assertIn(self.bucket, self.app.get('/buckets').json['buckets'])
        wait_past(self.app.get(self.path('brief')).headers['X-Expires-At'])
        self.assertNotIn(self.bucket, self.app.get('/buckets').json['buckets'])
        self.app.get('/buckets/' + self.bucket, status=404)

    def test_x_expires_at_sets_the_moment(self):
        moment = int(time.time()) + 2
        written = self.put('at', b'x', headers={'X-Expires-At': http_date(moment)}, status=201)
        self.assertEqual(written.headers['X-Expires-At'], http_date(moment))
        self.assertEqual(self.app.get(self.path('at')).body, b'x')
        wait_past(http_date(moment))
        self.app.get(self.path('at'), status=404)

    def test_nonsensical_lifetimes_are_400_bad_expiry_and_store_nothing(self):
        later = http_date(int(time.time()) + 3600)
        for params, headers in (('?ttl=0', {}), ('?ttl=-5', {}), ('?ttl=1.5', {}), ('?ttl=soon', {}),
                                ('?ttl=315360001', {}), ('?ttl=99999999999999999999', {}),
                                ('?ttl=60', {'X-Expires-At': later}),
                                ('', {'X-Expires-At': http_date(int(time.time()) - 60)}),
                                ('', {'X-Expires-At': http_date(int(time.time()) + 11 * 365 * 86400)}),
                                ('', {'X-Expires-At': 'tomorrow'})):
            refused = self.put('k', b'x', params, headers, status=400)
            self.assertEqual(refused.json['code'], 'bad_expiry', (params, headers))
        self.app.get(self.path('k'), status=404)

    def test_the_bucket_ttl_is_the_default_and_a_write_may_say_otherwise(self):
        for bad in ({'ttl': 0}, {'ttl': -1}, {'ttl': 'an hour'}, {'ttl': 1.5}, {'ttl': 10 ** 12}):
            self.assertEqual(self.error_code(self.app.put('/buckets/' + self.bucket, json.dumps(bad), status=400)),
                             (400, 'bad_property'))
        self.app.put('/buckets/' + self.bucket, json.dumps({'ttl': 3600}), status=201)
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['ttl'], 3600)
        before = time.time()
        default = self.put('default', b'x').headers['X-Expires-At']
        lived = email.utils.mktime_tz(email.utils.parsedate_tz(default)) - before
        self.assertTrue(3600 <= lived <= 3602, lived)
        self.assertNotIn('X-Expires-At', self.put('kept', b'x', '?ttl=none').headers)
        self.put('short', b'x', '?ttl=1')
        wait_past(self.app.get(self.path('short')).headers['X-Expires-At'])
        self.assertEqual(self.app.get(self.path()).json['keys'], ['default', 'kept'])
        self.app.put('/buckets/' + self.bucket, json.dumps({'ttl': None}))
        self.assertNotIn('X-Expires-At', self.put('after', b'x').headers)

    def test_a_write_with_the_context_extends_or_removes_the_expiry(self):
        first = self.put('lease', b'held', '?ttl=2')
        context = self.app.get(self.path('lease')).headers['X-Context']
        extended = self.put('lease', b'held', '?ttl=3600', {'X-Context': context})
        self.assertEqual(extended.json['siblings'], 1)
        wait_past(first.headers['X-Expires-At'])
        self.assertEqual(self.app.get(self.path('lease')).body, b'held')
        context = self.app.get(self.path('lease')).headers['X-Context']
        forever = self.put('lease', b'for good', headers={'X-Context': context})
        self.assertNotIn('X-Expires-At', forever.headers)
        self.assertNotIn('X-Expires-At', self.app.get(self.path('lease')).headers)

    def test_an_expired_sibling_leaves_the_other(self):
        self.put('pair', b'base')
        context = self.app.get(self.path('pair')).headers['X-Context']
        self.put('pair', b'brief', '?ttl=1', {'X-Context': context})
        self.put('pair', b'lasting', headers={'X-Context': context})
        self.assertEqual(self.app.get(self.path('pair'), status=300).status_int, 300)
        expires = self.app.get(self.path('pair'), headers={'Accept': 'application/json'}, status=300).json
        wait_past(next(s['expires_at'] for s in expires['siblings'] if 'expires_at' in s))
        self.assertEqual(self.app.get(self.path('pair')).body, b'lasting')


class ReplicaCase(SyncCase):
    """A store over the shared cluster, as the reconciler's tests have one."""

    def setUp(self):
        super().setUp()
        self.app = support.web_app(self.store)

    def owners(self, key):
        return self.store.ring.preference_list(self.bucket, key, 3)

    def path(self, key):
        return '/buckets/%s/keys/%s' % (self.bucket, key)

    def rows(self, store, key):
        """{partition: [(version id, holds a value)]} of every partition holding the key."""
        held = {p: engine.read(self.bucket, key) for p, engine in store.engines.items()}
        return {p: sorted((v.version_id, not v.deleted) for v in versions) for p, versions in held.items() if versions}

    def missed_by_an_owner(self, key, ttl):
        """Write 'old' on every owner, then 'new' with a ttl while the key's
        last owner's server is down: (that owner, its server, the answer)."""
        self.app.put(self.path(key) + '?w=all', b'old', headers=PLAIN)
        victim = self.owners(key)[-1]
        server = self.cluster.servers[int(victim[1:]) - 1]
        server.kill()
        return victim, server, self.app.put(self.path(key) + '?ttl=%d' % ttl, b'new', headers=PLAIN)


class TestExpiryAcrossReplicas(ReplicaCase):
    def test_an_owner_that_missed_the_expiring_write_brings_nothing_back(self):
        key = 'missed'
        victim, server, written = self.missed_by_an_owner(key, 2)
        self.assertIn(victim, written.json['down'])
        server.restart()
        # A fresh front end knows nothing of the hint: the owner still holds 'old'.
        fresh = self.open(self.partitions)
        self.assertEqual([v.value for v in fresh.engines[victim].read(self.bucket, key)], [b'old'])
        wait_past(written.headers['X-Expires-At'])
        self.assertEqual(fresh.get(self.bucket, key, r=3).current, [])
        self.assertEqual(fresh.list_keys(self.bucket).keys, [])
        # Read repair gives the owner the expired version as its tombstone, which supersedes 'old'.
        new_id = written.json['etag'].strip('"')
        self.assertTrue(support.wait_until(
            lambda: self.rows(fresh, key).get(victim) == [(new_id, False)], 5), self.rows(fresh, key))

    def test_a_hint_delivered_late_brings_no_expired_value_back(self):
        key = 'hinted'
        victim, server, written = self.missed_by_an_owner(key, 1)
        self.assertIn(victim, written.json['hints'])
        wait_past(written.headers['X-Expires-At'])
        server.restart()
        fresh = self.open(self.partitions)
        results, _, _ = sync_once(self.config, 'hints')
        self.assertEqual(results['hints'].counts['delivered'], 1)
        new_id = written.json['etag'].strip('"')
        self.assertEqual(self.rows(fresh, key)[victim], [(new_id, False)])
        for r in (1, 3):
            self.assertEqual(fresh.get(self.bucket, key, r=r).current, [])

    def test_read_repair_and_sync_repair_copy_an_expired_value_as_its_tombstone(self):
        keys = ('by-read', 'by-sync')
        written = {key: self.app.put(self.path(key) + '?ttl=1&w=all', key.encode(), headers=PLAIN) for key in keys}
        lost = {key: self.owners(key)[1] for key in keys}
        for key in keys:   # an owner loses the key (a disk replaced), with the values still live elsewhere
            self.store.engines[lost[key]].delete_versions(self.bucket, key,
                                                          [written[key].json['etag'].strip('"')])
        wait_past(written['by-sync'].headers['X-Expires-At'])
        self.app.get(self.path('by-read') + '?r=all', status=404)
        self.assertTrue(support.wait_until(lambda: lost['by-read'] in self.rows(self.store, 'by-read'), 5))
        results, _, _ = sync_once(self.config, 'repair')
        for key in keys:
            held = self.rows(self.store, key)
            self.assertEqual(held[lost[key]], [(written[key].json['etag'].strip('"'), False)], key)
            self.assertEqual(self.store.get(self.bucket, key, r=3).current, [])


class TestExpiryGc(ReplicaCase):
    def test_gc_makes_expired_values_tombstones_by_the_index_then_reaps_them_and_nothing_comes_back(self):
        store = self.open(self.partitions, chunk_size=1024, max_clock_skew=1)
        big = bytes(range(256)) * 12
        expiring = {'small': b'x', 'big': big}
        for key, value in expiring.items():
            store.put(self.bucket, key, value, 'application/octet-stream', w=3, lifetime=ttl(1))
        store.put(self.bucket, 'lasting', big, 'application/octet-stream', w=3)
        store.put(self.bucket, 'later', b'y', 'text/plain', w=3, lifetime=ttl(3600))
        # An owner of 'stale' still holds the version the expiring one replaced.
        store.put(self.bucket, 'stale', b'old', 'text/plain', w=3)
        old = store.engines[self.owners('stale')[0]].read(self.bucket, 'stale')[0]
        new = store.put(self.bucket, 'stale', b'new', 'text/plain', w=3, lifetime=ttl(1)).version
        stale_owner = self.owners('stale')[2]
        store.engines[stale_owner].delete_versions(self.bucket, 'stale', [new.version_id])
        store.engines[stale_owner].apply(self.bucket, 'stale', old)
        expires = max(v.expires for key in ('small', 'big', 'stale')   # 'stale' was written last
                      for v in store.engines[self.owners(key)[0]].read(self.bucket, key))
        time.sleep(max(0.0, expires / SECOND + 1.5 - time.time()))   # past it by max_clock_skew

        chunks = lambda key: sum(e.chunks_held(v.version_id) for e in store.engines.values()   # noqa: E731
                                 for v in store.engines[self.owners(key)[0]].read(self.bucket, key))
        self.assertGreater(chunks('big'), 0)
        ids = {key: [v.version_id for v in store.engines[self.owners(key)[0]].read(self.bucket, key)]
               for key in ('small', 'big', 'stale')}
        grace = {'tombstone_grace': 3600, 'chunk_grace': 0}
        results, _, _ = sync_once(config_of(self.partitions, grace, chunk_size=1024, max_clock_skew=1), 'gc')
        self.assertEqual(results['gc'].counts['expired_reaped'], 3 + 3 + 2)   # 'stale': two owners hold it
        for key in ('small', 'big', 'stale'):
            for name, rows in self.rows(store, key).items():
                if (key, name) != ('stale', stale_owner):
                    self.assertEqual(rows, [(ids[key][0], False)], (key, name))   # the same version, a tombstone
        self.assertEqual(chunks('big'), 0)
        self.assertEqual(store.get(self.bucket, 'lasting').current[0].size, len(big))
        self.assertEqual(b''.join(store.open_value(store.get(self.bucket, 'lasting').current[0])), big)

        # Reaped as tombstones once the grace passed, but 'stale' only once its stale owner has the tombstone.
        reap = config_of(self.partitions, {'tombstone_grace': 0}, max_clock_skew=1)
        results, _, _ = sync_once(reap, 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 2)
        self.assertEqual(store.get(self.bucket, 'stale', r=3).current, [])
        results, _, status = sync_once(reap, 'repair', 'gc')
        self.assertEqual(results['gc'].counts['tombstones_reaped'], 1)
        left = {k for b, k in holdings(store) if b == self.bucket}
        self.assertEqual(left, {'lasting', 'later'})
        for r in (1, 3):
            self.assertEqual(store.get(self.bucket, 'stale', r=r).current, [])
        self.assertEqual(store.list_keys(self.bucket).keys, ['lasting', 'later'])

    def test_gc_finds_expired_values_by_an_index(self):
        bulk_load(self.store, self.bucket, ['k%05d' % i for i in range(3000)])
        engine = self.store.engines['p1']
        with engine._cursor() as cursor:
            engine._execute(cursor, 'EXPLAIN ' + engine.expired_query, (time.time_ns() // 1000, 100))
            plan = repr(cursor.fetchall())
        self.assertIn('objects_expiry', plan)


class TestSkewedClocks(ReplicaCase):
    """Versions as a front end whose clock runs ahead stores them (written
    through the engines: the store has no setting to move its own clock)."""

    def write_ahead(self, key, value, ahead, expires):
        """Coordinate a version on the key's first owner dated `ahead`
        seconds in the future, expiring at `expires` (microseconds), and copy
        it to the other owners."""
        owners = self.owners(key)
        now = time.time_ns() // 1000 + int(ahead * SECOND)

        def decide(held):
            seen = context_of(held)
            version = Version.new(seen, next_dot(self.store.engines[owners[0]].actor, held, seen, now), value,
                                  'text/plain', expires=expires)
            version.modified = now
            return version
        _, version = self.store.engines[owners[0]].coordinate(self.bucket, key, decide)
        for owner in owners[1:]:
            self.store.engines[owner].apply(self.bucket, key, version)
        return version

    def test_a_value_from_a_front_end_ahead_is_gone_at_its_expiry_not_at_its_date(self):
        self.app.put(self.path('ahead') + '?w=all', b'before', headers=PLAIN)
        expires = (int(time.time()) + 2) * SECOND
        self.write_ahead('ahead', b'from the future', 30, expires)
        read = self.app.get(self.path('ahead'))
        self.assertEqual(read.body, b'from the future')
        wait_past(read.headers['X-Expires-At'])
        self.app.get(self.path('ahead'), status=404)
        self.app.get('/buckets/%s/keys' % self.bucket, status=404)   # no bucket: it holds no value
        # A write after it (If-None-Match: *) supersedes it, though its dot and date are ahead.
        self.app.put(self.path('ahead'), b'now', headers=dict(PLAIN, **{'If-None-Match': '*'}), status=201)
        self.assertEqual(self.app.get(self.path('ahead') + '?r=all').body, b'now')

    def test_gc_leaves_a_value_expired_less_than_max_clock_skew_ago(self):
        # gc on a host whose clock is ahead sees values expire early: it waits
        # max_clock_skew, so no front end within it still serves one it took.
        version = self.write_ahead('recent', b'x', 0, time.time_ns() // 1000 - SECOND)
        results, _, _ = sync_once(config_of(self.partitions, max_clock_skew=60), 'gc')
        self.assertEqual(results['gc'].counts['expired_reaped'], 0)
        self.assertEqual(self.rows(self.store, 'recent')[self.owners('recent')[0]], [(version.version_id, True)])
        time.sleep(1.2)
        results, _, _ = sync_once(config_of(self.partitions, max_clock_skew=1), 'gc')
        self.assertEqual(results['gc'].counts['expired_reaped'], 3)
        self.assertEqual(self.rows(self.store, 'recent')[self.owners('recent')[0]], [(version.version_id, False)])
        self.assertEqual(sync.exit_status(list(results.values())), sync.CONVERGED)


def ttl(seconds):
    from kvstore.coordinator.expiry import Lifetime
    return Lifetime(ttl=seconds)


if __name__ == '__main__':
    shared_cluster()
    unittest.main()
