"""Large values: uploaded to a coordinator chunk by chunk, served chunk by chunk.

A value that fits in one chunk is stored inline in its version.  A larger one
is read and written chunk by chunk to the coordinator first, so it is never
held whole in memory; its version, written last, makes it visible at once,
and replicas copy the chunks from the coordinator.
"""
import hashlib
import itertools
import logging
import uuid

from kvstore.engines import FULL, PartitionError
from kvstore.errors import CorruptData, InsufficientStorage, TooLarge, Unavailable

log = logging.getLogger('kvstore.datastore')


def read_up_to(stream, size):
    """Up to size bytes: fewer only at the end of the stream."""
    parts, wanted = [], size
    while wanted:
        data = stream.read(wanted)
        if not data:
            break
        parts.append(data)
        wanted -= len(data)
    return b''.join(parts)


def chunks_of(stream, head, size):
    """The chunks of a value: those in head (already read), then the rest of stream."""
    return itertools.chain(head, iter(lambda: read_up_to(stream, size), b''))


class Chunks:
    def __init__(self, config, replicas):
        self.chunk_size = config.chunk_size
        self.max_value_bytes = config.max_value_bytes
        self.replicas = replicas

    def check_size(self, size):
        if size > self.max_value_bytes:
            raise TooLarge('values are at most %d bytes' % self.max_value_bytes, limit=self.max_value_bytes)

    def upload(self, candidates, bucket, key, chunks, hasher):
        """Store chunks (an iterator of bytes) on the first of candidates that
        is available, checking each against hasher (integrity.Hasher) as it
        goes: (that partition, the new version's id).  An upload that fails
        leaves no chunks behind."""
        coordinator = next((p for p in candidates if self.replicas.health.available(p)), None)
        if coordinator is None:
            raise Unavailable('no replica of the key could take the write',
                              failed={p: 'down' for p in candidates})
        version_id = uuid.uuid4().hex
        try:
            for seq, data in enumerate(chunks):
                hasher.update(data)
                self.check_size(hasher.size)
                self._store_chunk(coordinator, bucket, key, version_id, seq, data)
            hasher.verify()
        except BaseException:
            self._forget_chunks(coordinator, version_id)
            raise
        return coordinator, version_id

    def _store_chunk(self, partition, bucket, key, version_id, seq, data):
        try:
            self.replicas.call(partition, 'write_chunk', bucket, key, version_id, seq, data)
        except PartitionError as e:
            if e.reason == FULL:
                raise InsufficientStorage('partition %s is full' % partition, failed={partition: e.reason})
            raise Unavailable('the partition taking the value failed', failed={partition: e.reason})

    def _forget_chunks(self, partition, version_id):
        """Remove the chunks of an upload that failed (sync.py's gc catches the rest)."""
        try:
            self.replicas.call(partition, 'delete_chunks', version_id)
        except PartitionError:
            pass

    def open_value(self, version, first=0, last=None):
        """The bytes first..last (inclusive) of a version, as an iterator of
        chunks read one at a time.  Bytes that do not match their digest are
        never served: an inline value is checked before anything is sent, a
        chunked one chunk by chunk (and whole, when it is read whole), and a
        mismatch ends the stream with an error."""
        last = version.size - 1 if last is None else last
        if not version.chunk_size:
            if hashlib.sha256(version.value).hexdigest() != version.digest:
                log.error('version %s: the value does not match its digest', version.version_id)
                raise CorruptData('the stored value is damaged; it is not served')
            return iter([version.value[first:last + 1]])
        return self._stream_chunks(version, first, last)

    @staticmethod
    def _stream_chunks(version, first, last):
        whole = hashlib.sha256() if (first, last) == (0, version.size - 1) else None
        for data in version.chunk_source.iter_value(version, first, last):
            if whole:
                whole.update(data)
            yield data
        if whole and whole.hexdigest() != version.digest:
            log.error('version %s: the chunks do not match the value digest', version.version_id)
            raise CorruptData('the stored value is damaged')
