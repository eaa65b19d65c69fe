"""The HTTP API's buckets and listings, against SQLite and real MariaDB partitions."""
import json
import unittest
import urllib.parse

from test import support
from test.api_base import KEY, KEYS, ApiSpecification


class BucketSpecification(ApiSpecification):
    """Buckets: their lifecycle, properties, preconditions and key listings."""

    # -- buckets ---------------------------------------------------------------

    def test_bucket_lifecycle(self):
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 201)
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 200)
        self.assertIn(self.bucket, self.app.get('/buckets').json['buckets'])
        info = self.app.get('/buckets/' + self.bucket + '?count=true').json
        self.assertEqual((info['key_count'], info['properties']['conflicts']), (0, 'siblings'))
        self.assertEqual(self.app.delete('/buckets/' + self.bucket).status_int, 200)
        self.assertError(self.app.get('/buckets/' + self.bucket, status=404), 404, 'not_found')
        self.assertError(self.app.delete('/buckets/' + self.bucket, status=404), 404, 'not_found')

    def test_writing_a_key_creates_its_bucket(self):
        self.put('k1')
        self.put('k2')
        self.assertIn(self.bucket, self.app.get('/buckets').json['buckets'])
        self.assertEqual(self.app.get('/buckets/' + self.bucket + '?count=true').json['key_count'], 2)

    def test_deleting_a_bucket_that_holds_keys_needs_force(self):
        self.put('k')
        self.assertError(self.app.delete('/buckets/' + self.bucket, status=409), 409, 'bucket_not_empty')
        self.assertEqual(self.get('k').body, b'value')
        self.assertEqual(self.app.delete('/buckets/%s?force=true' % self.bucket).status_int, 200)
        self.get('k', status=404)
        self.assertNotIn(self.bucket, self.app.get('/buckets').json['buckets'])

    def test_putting_a_bucket_again_keeps_its_properties(self):
        self.app.put('/buckets/' + self.bucket, json.dumps({'conflicts': 'lww'}))
        self.assertEqual(self.app.put('/buckets/' + self.bucket).status_int, 200)
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')

    def test_bucket_properties_are_checked_and_stored(self):
        self.app.put('/buckets/' + self.bucket, json.dumps({'conflicts': 'lww'}))
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')
        for body in ('{"conflicts": "maybe"}', '{"color": "red"}', '[1]', 'not json'):
            self.assertEqual(self.app.put('/buckets/' + self.bucket, body, status=400).status_int, 400)
        self.assertEqual(self.app.get('/buckets/' + self.bucket).json['properties']['conflicts'], 'lww')

    # -- conditional requests on buckets ---------------------------------------

    def test_bucket_writes_honour_if_match_and_if_none_match_on_its_etag(self):
        url = '/buckets/%s-cond' % self.bucket
        self.app.put(url, headers={'If-Match': '*'}, status=412)   # no bucket yet
        self.app.get(url, status=404)
        etag = self.app.put(url, b'{"conflicts": "lww"}', status=201).headers['ETag']
        self.assertEqual(self.app.get(url).headers['ETag'], etag)
        # Create-only on an existing bucket, and a stale If-Match, change nothing.
        refused = self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-None-Match': '*'}, status=412)
        self.assertError(refused, 412, 'precondition_failed')
        self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-Match': '"nope"'}, status=412)
        self.assertEqual(self.app.get(url).json['properties']['conflicts'], 'lww')
        changed = self.app.put(url, b'{"conflicts": "siblings"}', headers={'If-Match': etag}, status=200)
        self.assertNotEqual(changed.headers['ETag'], etag)
        self.app.delete(url, headers={'If-Match': etag}, status=412)
        self.app.delete(url, headers={'If-None-Match': '*'}, status=412)
        self.app.get(url, status=200)
        self.app.delete(url, headers={'If-Match': changed.headers['ETag']}, status=200)
        self.app.get(url, status=404)

    def test_a_bucket_read_takes_the_newest_record_its_owners_answer(self):
        """R + W > N: a read of R owners overlaps the W that took the last
        update, and takes that update even when a stale owner answers first."""
        url = '/buckets/' + self.bucket
        self.app.put(url, b'{"conflicts": "lww"}', status=201)
        first_owner = self.store.owners.bucket_owners(self.bucket)[0]
        stale = self.store.engines[first_owner].read_bucket(self.bucket)
        self.app.put(url, b'{"conflicts": "siblings"}', status=200)
        self.store.engines[first_owner].write_bucket(self.bucket, stale)   # it missed the update
        for _ in range(5):
            self.assertEqual(self.app.get(url).json['properties'], {'conflicts': 'siblings'})

    def test_a_bucket_revalidates_and_its_count_has_no_validator(self):
        """RFC 9110 8.8.3: a strong ETag changes whenever the representation
        does; the bucket document is its properties, the count is asked for."""
        url = '/buckets/%s-rev' % self.bucket
        etag = self.app.put(url, b'{"conflicts": "lww"}', status=201).headers['ETag']
        self.assertEqual(self.app.get(url, headers={'If-None-Match': etag}, status=304).body, b'')
        before = self.app.get(url)
        self.app.put(url + '/keys/k', b'v', headers={'Content-Type': 'text/plain'})
        self.assertEqual(self.app.get(url).body, before.body)
        counted = self.app.get(url + '?count=true')
        self.assertEqual(counted.json['key_count'], 1)
        self.assertNotIn('ETag', counted.headers)
        self.app.put(url, b'{"conflicts": "siblings"}', status=200)
        self.app.get(url, headers={'If-None-Match': etag}, status=200)

    # -- listing ---------------------------------------------------------------

    def test_listing_pages_through_every_key_in_byte_order_without_repeats(self):
        keys = ['p/%03d' % i for i in range(23)] + ['q/é', 'q/z', 'p/\u00ff', 'other']
        for key in keys:
            self.put(key, b'x')
        seen, url, pages = [], KEYS % self.bucket + '?prefix=p/&limit=7', 0
        while url:
            page = self.app.get(url)
            pages += 1
            seen.extend(page.json['keys'])
            cursor = page.json['next_cursor']
            url = (KEYS % self.bucket + '?' + urllib.parse.urlencode(
                {'prefix': 'p/', 'limit': 7, 'cursor': cursor})) if cursor else None
            if cursor:
                self.assertIn('rel="next"', page.headers['Link'])
        expected = sorted((k for k in keys if k.startswith('p/')), key=lambda k: k.encode('utf-8'))
        self.assertEqual(seen, expected)
        self.assertEqual(pages, 4)
        everything = self.app.get(KEYS % self.bucket + '?limit=1000').json
        self.assertEqual(everything['keys'], sorted(keys, key=lambda k: k.encode('utf-8')))
        self.assertIsNone(everything['next_cursor'])

    def test_listing_leaves_out_deleted_keys(self):
        self.put('a')
        self.put('b')
        self.app.delete(KEY % (self.bucket, 'a'))
        self.assertEqual(self.app.get(KEYS % self.bucket).json['keys'], ['b'])

    def test_keys_holding_separator_and_control_bytes_are_listed_whole(self):
        # MySQL partitions pack a listing's columns with 0x1f between them.
        keys = ['unit\x1fseparated', '\x1f', 'tab\tand\x1f\x1fmore', 'plain']
        for key in keys:
            self.put(key, b'x')
        self.app.delete(KEY % (self.bucket, urllib.parse.quote('\x1f')))
        listed = self.app.get(KEYS % self.bucket).json['keys']
        self.assertEqual(listed, sorted(set(keys) - {'\x1f'}, key=lambda k: k.encode('utf-8')))

    def test_a_delimiter_lists_the_keys_of_one_level_and_each_folder_once(self):
        keys = ['a.txt', 'img/1.png', 'img/2.png', 'img/sub/3.png', 'img/sub/4.png', 'img0', 'notes/x', 'z',
                'img/\U0010ffffx']
        for key in keys:
            self.put(key, b'x' * len(key))
        top = self.app.get(KEYS % self.bucket + '?delimiter=/').json
        self.assertEqual((top['keys'], top['common_prefixes'], top['delimiter']),
                         (['a.txt', 'img0', 'z'], ['img/', 'notes/'], '/'))
        level = self.app.get(KEYS % self.bucket + '?prefix=img/&delimiter=/').json
        self.assertEqual((level['keys'], level['common_prefixes']),
                         (['img/1.png', 'img/2.png', 'img/\U0010ffffx'], ['img/sub/']))
        # Paged: a folder is one entry, and the page after it goes on past every key in it.
        entries, cursors, url = [], [], KEYS % self.bucket + '?delimiter=/&limit=2'
        while url:
            page = self.app.get(url)
            entries.append(sorted(page.json['keys'] + page.json['common_prefixes']))
            cursor = page.json['next_cursor']
            if cursor:
                self.assertIn('delimiter=%2F', page.headers['Link'])
                cursors.append(cursor)
            url = KEYS % self.bucket + '?' + urllib.parse.urlencode(
                {'delimiter': '/', 'limit': 2, 'cursor': cursor}) if cursor else None
        self.assertEqual(entries, [['a.txt', 'img/'], ['img0', 'notes/'], ['z']])
        # And back: the page before the last one, from its previous_cursor.
        back = self.app.get(KEYS % self.bucket + '?' + urllib.parse.urlencode(
            {'delimiter': '/', 'limit': 2, 'before': page.json['previous_cursor']})).json
        self.assertEqual((back['keys'], back['common_prefixes']), (['img0'], ['notes/']))
        self.assertError(self.app.get(KEYS % self.bucket + '?delimiter=' + 'x' * 65, status=400), 400,
                         'bad_parameter')

    def test_details_give_each_key_s_size_type_and_date(self):
        self.put('a', b'12345')
        self.app.put(KEY % (self.bucket, 'b'), b'<p>', headers={'Content-Type': 'text/html'})
        listed = self.app.get(KEYS % self.bucket + '?details=true').json
        self.assertEqual([{k: v for k, v in d.items() if k != 'last_modified'} for d in listed['details']],
                         [{'key': 'a', 'size': 5, 'content_type': 'text/plain',
                           'etag': self.app.get(KEY % (self.bucket, 'a')).headers['ETag']},
                          {'key': 'b', 'size': 3, 'content_type': 'text/html',
                           'etag': self.app.get(KEY % (self.bucket, 'b')).headers['ETag']}])
        self.assertEqual(listed['details'][0]['last_modified'],
                         self.app.get(KEY % (self.bucket, 'a')).headers['Last-Modified'])
        self.assertNotIn('details', self.app.get(KEYS % self.bucket).json)

    def test_listing_parameters_are_checked(self):
        self.put('a')
        self.assertError(self.app.get(KEYS % self.bucket + '?limit=0', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % self.bucket + '?limit=x', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % self.bucket + '?cursor=%%%%', status=400), 400, 'bad_parameter')
        self.assertError(self.app.get(KEYS % support.unique(), status=404), 404, 'not_found')


class TestApiBucketsOnSQLite(support.OnSQLite, BucketSpecification, unittest.TestCase):
    pass


class TestApiBucketsOnMariaDB(support.OnMariaDB, BucketSpecification, unittest.TestCase):
    pass
