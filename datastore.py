"""Routing and replication: which partitions hold a key, and quorums over them.

The Datastore is the one face of the coordinator the controller, sync.py and
the tests use; it composes its layers, each a module of kvstore/coordinator/:

    validation   bucket names, keys and quorum sizes a request gives
    replicas     calling partitions through the failure detector (health.py),
                 one at a time, fanned out in threads, or sent all at once
    placement    a key's owners on the ring (ring.py), and during a view
                 change (views.py) its previous owners
    reads        quorum reads and read repair
    batches      many keys of a bucket in one request, grouped by partition
    writes       coordinated writes; replication.py sends a version to the
                 other owners, or hints for them; settling.py drops the
                 pending marker of a write answered before all held it;
                 decider.py decides compare-and-swap on the first owner
    chunks       large values, uploaded and served chunk by chunk
    handoff      hinted handoff: delivering the hints held for a partition
    listing      the live keys of a bucket, merged across the partitions
    feed         the change feed of a bucket, merged from the partitions' change logs
    buckets      the bucket registry: properties and their cache
    views        the views recorded on the partitions (for sync.py)
    status       what GET /cluster and /ready report

versions.py holds the vector clocks and how versions supersede each other;
kvstore/engines/ one partition's storage, SQLite or MySQL/MariaDB.
"""
import concurrent.futures

from kvstore import configuration
from kvstore.coordinator import validation
from kvstore.coordinator.batches import Batches
from kvstore.coordinator.buckets import DEFAULT_BUCKET_PROPERTIES, BucketRegistry
from kvstore.coordinator.chunks import Chunks, read_up_to
from kvstore.coordinator.decider import ConditionalDecider
from kvstore.coordinator.feed import ChangeFeed, FeedPage
from kvstore.coordinator.gossip import Gossip
from kvstore.coordinator.handoff import HintedHandoff
from kvstore.coordinator import workers
from kvstore.coordinator.health import Health
from kvstore.coordinator.listing import MAX_LIST_LIMIT, KeyPage, Listing, key_is_live
from kvstore.coordinator.placement import Placement
from kvstore.coordinator.reads import Read, Reader
from kvstore.coordinator.replicas import Replicas
from kvstore.coordinator.settling import Settling
from kvstore.coordinator.status import ClusterStatus
from kvstore.coordinator.versions import iso_time
from kvstore.coordinator.views import ViewConflict, ViewRecords, newest_view, ring_digest
from kvstore.coordinator.writes import IdempotencyKey, Receipt, Writer
from kvstore.engines import open_engine

# What the controller, sync.py and the tests import from here.
__all__ = ['Datastore', 'IdempotencyKey', 'Read', 'Receipt', 'KeyPage', 'FeedPage', 'ViewConflict',
           'MAX_LIST_LIMIT', 'DEFAULT_BUCKET_PROPERTIES', 'iso_time', 'key_is_live', 'read_up_to']


class Datastore:
    def __init__(self, config):
        self.config = config
        self.n = config.replicas
        self.engines = {p.name: open_engine(p, config) for p in config.partitions}
        self.health = Health(self.engines, config.backoff, config.max_backoff, publish=workers.publish)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, 4 * len(self.engines)), thread_name_prefix='replica')
        # How long a request waits for replicas before counting them as failed.
        self.timeout = config.connect_timeout + config.read_timeout + 0.5
        # A partition that answers again gets its hints (self.handoff is built below).
        self.replicas = Replicas(self.engines, self.health, self.executor, self.timeout, config.read_timeout,
                                 on_recovered=lambda name: self.handoff.start(name))
        self.views = ViewRecords(config, self.replicas)
        self.owners = Placement(config, self.replicas, self.views)
        self.ring = self.owners.ring
        self.handoff = HintedHandoff(self.replicas, self.owners)
        self.gossip = Gossip(self.health, config.peers, config.gossip_interval, config.cluster_secret,
                             on_recovered=self.handoff.start)
        self.listing = Listing(config, self.replicas)
        self.feed = ChangeFeed(config, self.replicas)
        self.buckets = BucketRegistry(config, self.replicas, self.owners, self.listing)
        self.reader = Reader(config, self.replicas, self.owners, self.buckets)
        self.chunks = Chunks(config, self.replicas)
        self.settling = Settling(self.replicas)
        self.writer = Writer(config, self.replicas, self.owners, self.buckets, self.chunks,
                             ConditionalDecider(self.replicas, self.reader, self.owners), self.handoff, self.settling,
                             self.reader)
        self.batches = Batches(config, self.replicas, self.owners, self.buckets, self.reader, self.writer)
        self.status = ClusterStatus(config, self.replicas, self.views, self.gossip)

    @classmethod
    def from_configuration(cls, path=None):
        return cls(configuration.load(path))

    def close(self):
        self.gossip.stop()
        self.executor.shutdown(wait=True)
        self.settling.close()
        for engine in self.engines.values():
            engine.close()

    # -- validation ---------------------------------------------------------

    def quorum(self, raw, default, name):
        return validation.quorum(raw, default, name, self.n)

    def quorums(self, props, **requested):
        return validation.quorums(self.config, props, **requested)

    def check_bucket(self, bucket):
        validation.check_bucket(bucket)

    def check_key(self, bucket, key):
        validation.check_key(bucket, key, self.config.key_length)

    # -- calling partitions -------------------------------------------------

    def call(self, name, method, *args):
        """engine.method(*args) on one partition: every call goes through Replicas.call."""
        return self.replicas.call(name, method, *args)

    def _fan_out(self, candidates, call, launch, needed, unfinished=None, timeout=None):
        return self.replicas.fan_out(candidates, call, launch, needed, unfinished=unfinished, timeout=timeout)

    # -- keys ---------------------------------------------------------------

    def placement(self, bucket, key):
        """(preference list, fallbacks): the N owners, then every other partition."""
        return self.owners.of(bucket, key)

    def get(self, bucket, key, r=None, pr=None):
        """The key's current versions (a Read) from r replicas, pr of them owners."""
        self.check_key(bucket, key)
        return self.reader.get(bucket, key, r=r, pr=pr)

    def put(self, bucket, key, value, content_type, context=None, check=None, w=None,
            metadata=None, expected=None, conditional=False, pw=None, idempotency=None, lifetime=None):
        """Store a value (bytes or a stream) and answer with its Receipt (see
        Writer.put; idempotency: an IdempotencyKey; lifetime: an expiry.Lifetime)."""
        self.check_key(bucket, key)
        return self.writer.put(bucket, key, value, content_type, context=context, check=check, w=w,
                               metadata=metadata, expected=expected, conditional=conditional, pw=pw,
                               idempotency=idempotency, lifetime=lifetime)

    def delete(self, bucket, key, context=None, check=None, w=None, conditional=False, pw=None, idempotency=None):
        """Write a tombstone; NotFound when there is no live version."""
        self.check_key(bucket, key)
        return self.writer.delete(bucket, key, context=context, check=check, w=w, conditional=conditional, pw=pw,
                                  idempotency=idempotency)

    def batch(self, bucket, operations, r=None, pr=None, w=None, pw=None):
        """Many operations (batches.Operation) on keys of a bucket, grouped by
        partition; not atomic: each one's outcome, in order (see Batches.run)."""
        for op in operations:
            self.check_key(bucket, op.key)
        return self.batches.run(bucket, operations, r=r, pr=pr, w=w, pw=pw)

    def open_value(self, version, first=0, last=None):
        """The bytes first..last (inclusive) of a version, as an iterator of chunks."""
        return self.chunks.open_value(version, first, last)

    # -- hinted handoff -----------------------------------------------------

    def hint_destinations(self, bucket, key, target):
        return self.handoff.hint_destinations(bucket, key, target)

    def hand_off(self, target, batch=500):
        """Deliver every hint held for target: (delivered, left)."""
        return self.handoff.hand_off(target, batch)

    # -- listings and buckets -------------------------------------------------

    def list_keys(self, bucket, prefix='', limit=1000, after=None, delimiter=None, details=False):
        """A KeyPage of live keys in byte order, merged across every partition
        (with a delimiter, and the common prefixes; details: and their versions)."""
        return self.listing.list_keys(bucket, prefix, limit, after, delimiter, details)

    def has_keys(self, bucket):
        return self.listing.has_keys(bucket)

    def count_keys(self, bucket):
        return self.listing.count_keys(bucket)

    def changes(self, bucket, since=None, limit=100, values=False):
        """A FeedPage of the bucket's changes after the cursor `since` (None:
        none, and a cursor at the end of every log; '0': from the oldest kept)."""
        self.check_bucket(bucket)
        return self.feed.now(bucket) if since is None else self.feed.page(bucket, since, limit, values)

    def bucket_names(self):
        return self.buckets.names()

    def bucket_properties_cached(self, bucket):
        return self.buckets.properties_cached(bucket)

    def bucket_properties(self, bucket):
        """A bucket's properties, or None when it neither was created nor holds keys."""
        return self.buckets.properties(bucket)

    def create_bucket(self, bucket, properties=None):
        """Create or update a bucket; True when it is new."""
        return self.buckets.create(bucket, properties)

    def delete_bucket(self, bucket, force=False):
        """Delete a bucket: refused while it holds keys, unless forced."""
        self.buckets.delete(bucket, force)

    # -- view changes and reconciliation (sync.py) ----------------------------

    ring_digest = staticmethod(ring_digest)
    newest_view = staticmethod(newest_view)

    def ring_description(self):
        return self.views.ring_description()

    def read_views(self):
        return self.views.read_views()

    def previous_owners(self, bucket, key, preference):
        return self.owners.previous_owners(bucket, key, preference)

    def record_view(self, force=False, dry_run=False):
        """Record the configured view as a new epoch when it changed (see ViewRecords.record_view)."""
        recorded = self.views.record_view(force, dry_run)
        if not dry_run:
            self.owners.forget_previous_rings()
        return recorded

    def complete_view(self, view):
        """Mark the view's rebalance complete on every partition: True when all took it."""
        completed = self.views.complete_view(view)
        self.owners.forget_previous_rings()
        return completed

    def retire_previous(self, view):
        """Mark a complete view retired on every partition: True when all took it."""
        retired = self.views.retire_previous(view)
        self.owners.forget_previous_rings()
        return retired

    def record_progress(self, progress):
        self.views.record_progress(progress)

    def rebalance_status(self):
        return self.views.rebalance_status()

    @property
    def _view_cache(self):
        """The placement's cache of previous rings (a test resets it)."""
        return self.owners.previous_rings_cache

    @_view_cache.setter
    def _view_cache(self, value):
        self.owners.previous_rings_cache = value

    # -- status -------------------------------------------------------------

    def cluster_status(self):
        return self.status.cluster_status()

    def readiness(self):
        return self.status.readiness_cached()

    def keys_per_partition(self):
        return self.status.keys_per_partition()
