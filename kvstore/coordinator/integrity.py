"""Integrity of uploads: digests a client sends with a body, checked as it streams.

Content-MD5 (base64 MD5), Digest (RFC 3230: SHA-256=base64, MD5=base64),
Content-Digest and Repr-Digest (RFC 9530: sha-256=:base64:, md5=:base64:) are
understood.  The store always computes SHA-256: the version's `digest`, sent
back as Repr-Digest with the raw value.
"""
import base64
import binascii
import hashlib

from kvstore.errors import BadRequest

ALGORITHMS = {'sha-256': 'sha256', 'sha256': 'sha256', 'md5': 'md5'}


def expected_digests(env):
    """{hashlib name: digest bytes} the request claims for its body."""
    claims = {}

    def claim(algorithm, encoded, header):
        name = ALGORITHMS.get(algorithm.strip().lower())
        if name is None:
            return  # an algorithm we do not check
        try:
            claims[name] = base64.b64decode(encoded.strip().strip(':'), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest('bad_header', '%s is not base64' % header)

    if env.get('HTTP_CONTENT_MD5'):
        claim('md5', env['HTTP_CONTENT_MD5'], 'Content-MD5')
    for header, variable in (('Digest', 'HTTP_DIGEST'), ('Content-Digest', 'HTTP_CONTENT_DIGEST'),
                             ('Repr-Digest', 'HTTP_REPR_DIGEST')):
        for item in (env.get(variable) or '').split(','):
            algorithm, sep, encoded = item.partition('=')
            if sep:
                claim(algorithm, encoded, header)
    return claims


class Hasher:
    """SHA-256 of everything fed, plus whatever the client claimed."""

    def __init__(self, expected=None):
        self.expected = expected or {}
        self.hashes = {name: hashlib.new(name) for name in set(self.expected) | {'sha256'}}
        self.size = 0

    def update(self, data):
        self.size += len(data)
        for h in self.hashes.values():
            h.update(data)

    @property
    def hexdigest(self):
        return self.hashes['sha256'].hexdigest()

    def verify(self):
        """Raise BadRequest when a claimed digest does not match the body."""
        for name, digest in self.expected.items():
            if self.hashes[name].digest() != digest:
                raise BadRequest('digest_mismatch', 'the body does not match its %s digest'
                                 % {'sha256': 'SHA-256', 'md5': 'MD5'}[name])
