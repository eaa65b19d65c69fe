"""Documents (documents.py): JSON is written as json.dumps(indent=2) would."""
import collections
import json
import math
import random
import unittest

from kvstore.http import documents
TEXTS = ['', 'plain', 'ünïcödé ✓ 𝄞', 'quote " backslash \\ slash /', 'control \x00\x01\x1f\x7f',
         'line\nbreak\ttab\r', '\u2028\u2029', '\ud800']


def random_document(rng, depth=0):
    choice = rng.randrange(12 if depth < 4 else 7)
    if choice == 0:
        return rng.choice(TEXTS) + str(rng.random())
    if choice == 1:
        return rng.choice([0, 1, -1, 2 ** 70, -(2 ** 63)])
    if choice == 2:
        return rng.choice([True, False, None])
    if choice == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e300, 1e-300, math.inf, -math.inf, math.nan, 0.1 + 0.2])
    if choice in (4, 5, 6):
        return rng.choice(TEXTS)
    if choice in (7, 8):
        return {rng.choice(TEXTS + [str(i) for i in range(5)]) + str(i): random_document(rng, depth + 1)
                for i in range(rng.randrange(4))}
    if choice == 9:
        return [random_document(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 10:
        return tuple(random_document(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = [1, 2.5, True, False, None, 'k']
    return collections.OrderedDict((rng.choice(keys), random_document(rng, depth + 1)) for _ in range(3))


class TestJsonDocuments(unittest.TestCase):
    def expected(self, document):
        return json.dumps(document, indent=2, ensure_ascii=False) + '\n'

    def test_documents_are_written_exactly_as_json_dumps_indents_them(self):
        rng = random.Random(20261121)
        for _ in range(3000):
            document = {'root': random_document(rng)}
            self.assertEqual(documents.render_json(document, 'root'), self.expected(document))

    def test_a_receipt_reads_back_as_the_same_tree(self):
        receipt = {'bucket': 'b', 'key': 'ключ "1"', 'etag': '"abc"', 'clock': {'p1': 3, 'p2': 1},
                   'siblings': 1, 'preference_list': ['p1', 'p2', 'p3'], 'hints': {}, 'down': {},
                   'context': None, 'created': True}
        self.assertEqual(json.loads(documents.render_json(receipt, 'receipt')), receipt)
        self.assertEqual(documents.render_json(receipt, 'receipt'), self.expected(receipt))

    def test_what_json_refuses_is_refused(self):
        with self.assertRaises(TypeError):
            documents.render_json({'value': b'bytes'}, 'root')
