-- The tables of one partition database.
--
-- Every partition (a MariaDB/MySQL database, or an SQLite file) holds the same
-- tables.  The statements run unchanged on both engines and are idempotent:
-- the service runs them itself whenever it opens a partition.
-- Text columns are VARBINARY so that keys compare and sort as bytes.

-- Versions of keys.  A key has one row per version its replica holds: one
-- normally, several when concurrent writes left siblings.  A deleted key is a
-- tombstone row (deleted = 1) so that the delete carries a vector clock.
CREATE TABLE IF NOT EXISTS objects (
    bucket       VARBINARY(63)   NOT NULL,
    key_name     VARBINARY(1024) NOT NULL,
    version_id   VARBINARY(32)   NOT NULL,
    clock        VARBINARY(4096) NOT NULL,  -- JSON {partition: counter}
    deleted      SMALLINT        NOT NULL,
    content_type VARBINARY(255)  NOT NULL,
    digest       VARBINARY(64)   NOT NULL,  -- sha256 of value, hex; the ETag
    modified     BIGINT          NOT NULL,  -- microseconds since the epoch
    value        LONGBLOB        NOT NULL,  -- the bytes, when they fit in one chunk
    size         BIGINT          NOT NULL,  -- bytes in the value
    chunk_size   INT             NOT NULL,  -- 0: the value is inline; else it is in chunks
    metadata     VARBINARY(8192) NOT NULL,  -- JSON: X-Meta-* headers, Cache-Control
    point        BIGINT          NOT NULL,  -- the key's position on the ring (63 bits)
    expires      BIGINT          NOT NULL DEFAULT 0,  -- microseconds when the value is gone; 0: never
    PRIMARY KEY (bucket, key_name, version_id)
);
-- Each engine adds a column of its own to objects when it opens the partition:
-- seq, the change sequence, with an index (sync.py follows the changes; an
-- upgrade in kvstore/engines/schema.py, add_change_sequence in sqlite.py and
-- mariadb.py).  A partition made by an older release gets new columns in
-- place, and records its schema version in metadata (schema.py).  The index
-- objects_expiry (deleted, expires), by which sync.py's gc finds expired
-- values, comes from the upgrade that added expires (schema version 3): an
-- older partition runs these statements before it has the column.
-- Anti-entropy compares replicas range by range of ring positions.
CREATE INDEX IF NOT EXISTS objects_point ON objects (point);
-- The reconciler's garbage collection finds old tombstones by this index.
CREATE INDEX IF NOT EXISTS objects_tombstones ON objects (deleted, modified);

-- The change feed (GET /buckets/B/changes): every version this partition
-- stores, logged in the transaction that stores it (Keys._store), numbered by
-- change_log.top.  Taking a number locks that row until the commit, so the
-- numbers follow the commits and a reader that share-locks it (Feed) sees
-- every number up to top committed.  sync.py's gc trims old rows; trimmed is
-- the highest number removed (a cursor before it gets 410).
CREATE TABLE IF NOT EXISTS changes (
    seq          BIGINT          NOT NULL PRIMARY KEY,
    bucket       VARBINARY(63)   NOT NULL,
    key_name     VARBINARY(1024) NOT NULL,
    version_id   VARBINARY(32)   NOT NULL,
    clock        VARBINARY(4096) NOT NULL,
    deleted      SMALLINT        NOT NULL,
    content_type VARBINARY(255)  NOT NULL,
    size         BIGINT          NOT NULL,
    modified     BIGINT          NOT NULL,
    logged       BIGINT          NOT NULL   -- microseconds since the epoch, the partition's clock
);
CREATE INDEX IF NOT EXISTS changes_bucket ON changes (bucket, seq);
CREATE INDEX IF NOT EXISTS changes_logged ON changes (logged);
CREATE TABLE IF NOT EXISTS change_log (
    id           SMALLINT        NOT NULL PRIMARY KEY,  -- 1, the one row
    top          BIGINT          NOT NULL,
    trimmed      BIGINT          NOT NULL
);

-- Writes acknowledged before every replica held them (w < N): the reconciler
-- pushes these versions on, then drops the marker.
CREATE TABLE IF NOT EXISTS pending (
    bucket       VARBINARY(63)   NOT NULL,
    key_name     VARBINARY(1024) NOT NULL,
    version_id   VARBINARY(32)   NOT NULL,
    created      BIGINT          NOT NULL,
    PRIMARY KEY (bucket, key_name, version_id)
);

-- Buckets created explicitly, with their properties (JSON).  A bucket also
-- exists while it holds keys, with default properties.
CREATE TABLE IF NOT EXISTS buckets (
    name         VARBINARY(63)   NOT NULL PRIMARY KEY,
    properties   VARBINARY(4096) NOT NULL,
    modified     BIGINT          NOT NULL
);

-- Buckets deleted with force: versions of their keys modified at or before
-- `dropped` (microseconds) are refused wherever they arrive from (a replica's
-- write in flight, a hint, read repair, sync.py), so the keys stay deleted.
CREATE TABLE IF NOT EXISTS bucket_fences (
    bucket       VARBINARY(63)   NOT NULL PRIMARY KEY,
    dropped      BIGINT          NOT NULL
);

-- The outcomes of writes sent with an Idempotency-Key, on the partition that
-- decided them, written with their version: a retry with the same key gets
-- the first attempt's outcome.  sync.py's gc removes them after their window.
CREATE TABLE IF NOT EXISTS idempotency (
    bucket          VARBINARY(63)   NOT NULL,
    key_name        VARBINARY(1024) NOT NULL,
    idempotency_key VARBINARY(255)  NOT NULL,
    fingerprint     VARBINARY(64)   NOT NULL,  -- sha256 of what the request asked for, hex
    version_id      VARBINARY(32)   NOT NULL,
    digest          VARBINARY(64)   NOT NULL,
    modified        BIGINT          NOT NULL,
    deleted         SMALLINT        NOT NULL,
    created_key     SMALLINT        NOT NULL,  -- the write created the key (201)
    recorded        BIGINT          NOT NULL,  -- microseconds since the epoch
    PRIMARY KEY (bucket, key_name, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idempotency_recorded ON idempotency (recorded);

-- Facts about the partition itself (schema version, ring epoch).
CREATE TABLE IF NOT EXISTS metadata (
    name         VARBINARY(64)   NOT NULL PRIMARY KEY,
    value        VARBINARY(4096) NOT NULL
);

-- Hinted handoff: versions this partition holds for another partition (the
-- target) that was down when they were written.  Delivered and deleted once
-- the target is back; see datastore.Datastore.hand_off and sync.py.
CREATE TABLE IF NOT EXISTS hints (
    target       VARBINARY(64)   NOT NULL,
    bucket       VARBINARY(63)   NOT NULL,
    key_name     VARBINARY(1024) NOT NULL,
    version_id   VARBINARY(32)   NOT NULL,
    clock        VARBINARY(4096) NOT NULL,
    deleted      SMALLINT        NOT NULL,
    content_type VARBINARY(255)  NOT NULL,
    digest       VARBINARY(64)   NOT NULL,
    modified     BIGINT          NOT NULL,
    value        LONGBLOB        NOT NULL,
    size         BIGINT          NOT NULL,
    chunk_size   INT             NOT NULL,
    metadata     VARBINARY(8192) NOT NULL,
    created      BIGINT          NOT NULL,  -- microseconds since the epoch
    expires      BIGINT          NOT NULL DEFAULT 0,
    PRIMARY KEY (target, bucket, key_name, version_id)
);

-- The bytes of large values, in chunks of the version's chunk_size.  A
-- version's chunks are written before the version row that makes them
-- visible; chunks that no version or hint points to are garbage (an upload
-- that failed or was cut off) and the reconciler removes them.
CREATE TABLE IF NOT EXISTS chunks (
    version_id   VARBINARY(32)   NOT NULL,
    seq          INT             NOT NULL,
    bucket       VARBINARY(63)   NOT NULL,  -- the key the version is of, so that
    key_name     VARBINARY(1024) NOT NULL,  -- garbage is found by primary keys
    data         LONGBLOB        NOT NULL,
    digest       VARBINARY(64)   NOT NULL,  -- sha256 of data, hex
    created      BIGINT          NOT NULL,
    PRIMARY KEY (version_id, seq)
);
CREATE INDEX IF NOT EXISTS chunks_created ON chunks (created);
