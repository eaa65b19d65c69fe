"""What a partition's failure means: PartitionError and its reasons."""


class PartitionError(Exception):
    """A partition could not do what was asked (down, unreachable, failing).

    `unavailable` is False for failures that say nothing of the partition's
    health (a lock conflict, a full disk, a corrupt chunk, data the schema
    cannot hold): those do not mark it down.
    """

    def __init__(self, partition, reason, unavailable=True):
        super().__init__('%s: %s' % (partition, reason))
        self.partition = partition
        self.reason = reason
        self.unavailable = unavailable


class NewerView(Exception):
    """A conditional write's decider records a newer view (epoch) than the one
    the front end placed the key by: it must read the views again."""

    def __init__(self, partition, epoch):
        super().__init__('%s records view epoch %d' % (partition, epoch))
        self.partition = partition
        self.epoch = epoch


class Recorded(Exception):
    """A write sent with an idempotency key was decided before: its record
    (idempotency.py), the versions the partition holds, and its name."""

    def __init__(self, record, held, partition):
        super().__init__('the write was recorded before')
        self.record = record
        self.held = held
        self.partition = partition


FULL = 'full'                    # the partition's disk or table is full
LOCK_CONFLICT = 'lock conflict'
CORRUPT = 'corrupt data'
BAD_DATA = 'bad data'            # the data written does not fit the schema
# The database user lacks a privilege the statement needs: the partition fails
# every such statement until an operator fixes its grants, however well its
# other calls answer (health.py keeps it down until the refused call succeeds).
REFUSED = 'refused by its grants'
HEALTHY_FAILURES = (FULL, LOCK_CONFLICT, CORRUPT, BAD_DATA)
