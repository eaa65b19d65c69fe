"""The HTTP API's documents and errors, negotiated (RFC 9110 12), against SQLite and
real MariaDB partitions.
"""
import base64
import unittest
import xml.etree.ElementTree as ET

from test import support
from test.api_base import KEYS, ApiSpecification


class NegotiationSpecification(ApiSpecification):
    """Content negotiation of values, documents and errors."""

    def test_value_is_returned_raw_when_accept_admits_its_type(self):
        self.put('t', b'text', content_type='text/plain')
        for accept in ('text/plain', 'text/*', '*/*', 'application/json;q=0.9, text/plain'):
            got = self.get('t', headers={'Accept': accept})
            self.assertEqual(got.body, b'text', accept)

    def test_value_is_a_record_document_when_only_documents_are_acceptable(self):
        self.put('t', b'text', content_type='text/csv')
        doc = self.get('t', headers={'Accept': 'application/json'}).json
        self.assertEqual((doc['key'], doc['value'], doc['content_type']), ('t', 'text', 'text/csv'))
        self.put('b', b'\xff\x00', content_type='application/x-bin')
        doc = self.get('b', headers={'Accept': 'application/json'}).json
        self.assertEqual(base64.b64decode(doc['value_base64']), b'\xff\x00')
        xml = self.get('b', headers={'Accept': 'application/xml'})
        self.assertEqual(ET.fromstring(xml.body).find('key').text, 'b')

    def test_a_record_etag_names_the_type_the_record_is_sent_in(self):
        self.put('b', b'\xff\x00', content_type='application/x-bin')
        for accept in ('text/*', 'application/xml, text/xml',
                       'text/html;q=0.5, text/*;q=0.5', 'text/plain, application/json'):
            got = self.get('b', headers={'Accept': accept})
            sent = got.headers['Content-Type'].split(';')[0]
            self.assertTrue(got.headers['ETag'].endswith(':%s"' % sent), (accept, got.headers['ETag'], sent))

    def test_value_unacceptable_in_every_form_is_406(self):
        self.put('t', b'text', content_type='text/csv')
        self.assertError(self.get('t', headers={'Accept': 'image/png'}, status=406), 406, 'not_acceptable')

    def test_documents_come_in_json_xml_html_and_text(self):
        self.put('k', b'v')
        url = KEYS % self.bucket
        self.assertEqual(self.app.get(url).json['keys'], ['k'])  # JSON by default
        as_json = self.app.get(url, headers={'Accept': 'application/json'})
        self.assertTrue(as_json.headers['Content-Type'].startswith('application/json'))
        as_xml = self.app.get(url, headers={'Accept': 'application/xml'})
        self.assertIn('xml', as_xml.headers['Content-Type'])
        self.assertEqual([i.text for i in ET.fromstring(as_xml.body).find('keys')], ['k'])
        as_html = self.app.get(url, headers={'Accept': 'text/html'})
        self.assertTrue(as_html.headers['Content-Type'].startswith('text/html'))
        self.assertIn('<li>k</li>', as_html.text)
        as_text = self.app.get(url, headers={'Accept': 'text/plain'})
        self.assertTrue(as_text.headers['Content-Type'].startswith('text/plain'))
        self.assertIn('- k', as_text.text)
        self.assertIn('Accept', as_json.headers['Vary'])

    def test_head_of_a_document_has_its_length_and_no_body(self):
        get = self.app.get('/buckets')
        head = self.app.head('/buckets')
        self.assertEqual(head.body, b'')
        self.assertEqual(head.headers['Content-Length'], str(len(get.body)))

    def test_an_accept_header_that_cannot_be_parsed_is_400(self):
        self.assertError(self.app.get('/buckets', headers={'Accept': 'not a media type'}, status=400),
                         400, 'bad_header')

    def test_errors_in_xml_carry_the_type_asked_for(self):
        response = self.get('never', status=404, headers={'Accept': 'application/xml'})
        self.assertTrue(response.headers['Content-Type'].startswith('application/xml'))

    def test_a_value_406_reveals_nothing_of_the_value(self):
        self.put('t', b'text', content_type='text/csv')
        response = self.get('t', headers={'Accept': 'image/png'}, status=406)
        for header in ('ETag', 'X-Context', 'Last-Modified'):
            self.assertNotIn(header, response.headers)

    def test_documents_unacceptable_is_406_document(self):
        self.assertError(self.app.get('/buckets', headers={'Accept': 'image/png'}, status=406),
                         406, 'not_acceptable')

    def test_a_record_document_says_vary_once(self):
        self.put('t', b'text', content_type='text/csv')
        response = self.get('t', headers={'Accept': 'application/json'})
        self.assertEqual([v for k, v in response.headerlist if k == 'Vary'], ['Accept'])

    def test_errors_are_negotiated_too(self):
        response = self.get('never', status=404, headers={'Accept': 'application/xml'})
        self.assertEqual(ET.fromstring(response.body).find('code').text, 'not_found')
        response = self.get('never', status=404, headers={'Accept': 'text/html'})
        self.assertIn('not_found', response.text)

    def test_index_lists_the_api(self):
        doc = self.app.get('/').json
        paths = {e['path'] for e in doc['endpoints']}
        self.assertIn('/buckets/{bucket}/keys/{key}', paths)

    def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(self):
        self.assertError(self.app.get('/nowhere', status=404), 404, 'not_found')
        response = self.app.request('/buckets', method='DELETE', status=405)
        self.assertError(response, 405, 'method_not_allowed')
        self.assertEqual(response.headers['Allow'], 'GET, HEAD')

    def test_a_method_no_resource_takes_is_501_and_one_this_resource_does_not_take_405(self):
        # RFC 9110 15.6.2: 501 when the server does not recognise the method for any resource.
        for method, path in (('FOO', '/buckets'), ('PATCH', '/buckets/b/keys/k'), ('TRACE', '/')):
            response = self.app.request(path, method=method, status=501, expect_errors=True)
            self.assertError(response, 501, 'method_not_implemented')
            self.assertNotIn('Allow', response.headers)
            self.assertEqual(response.headers['X-Content-Type-Options'], 'nosniff')
        for method, path, allow in (('DELETE', '/', 'GET, HEAD'), ('POST', '/buckets', 'GET, HEAD'),
                                    ('OPTIONS', '/cluster', 'GET, HEAD'), ('GET', '/cluster/gossip', 'POST')):
            response = self.app.request(path, method=method, status=405)
            self.assertError(response, 405, 'method_not_allowed')
            self.assertEqual(response.headers['Allow'], allow)
            self.assertEqual(response.headers['X-Content-Type-Options'], 'nosniff')

    def test_listings_without_an_etag_honour_if_match_and_if_none_match_star(self):
        # RFC 9110 13.1.1-2: they exist, so "*" matches them and no entity-tag does.
        self.app.put('/buckets/%s/keys/k' % self.bucket, b'v', headers={'Content-Type': 'text/plain'})
        for path in ('/buckets', '/buckets/%s/keys' % self.bucket):
            failed = self.app.get(path, headers={'If-Match': '"anything"'}, status=412)
            self.assertError(failed, 412, 'precondition_failed')
            self.assertEqual(self.app.get(path, headers={'If-Match': '*'}).status_int, 200)
            unchanged = self.app.get(path, headers={'If-None-Match': '*'}, status=304)
            self.assertEqual(unchanged.body, b'')
            self.assertEqual(self.app.get(path, headers={'If-None-Match': '"anything"'}).status_int, 200)


class TestApiNegotiationOnSQLite(support.OnSQLite, NegotiationSpecification, unittest.TestCase):
    pass


class TestApiNegotiationOnMariaDB(support.OnMariaDB, NegotiationSpecification, unittest.TestCase):
    pass
