"""What a reconciler run reports: one JobResult per job, and the run's exit status."""
import dataclasses

CONVERGED, WORK_LEFT, ERROR = 0, 1, 2
STATUS_WORDS = {CONVERGED: 'converged', WORK_LEFT: 'work left', ERROR: 'error'}


@dataclasses.dataclass
class JobResult:
    name: str
    counts: dict
    waiting: dict                 # {partition: how many things wait for it}
    work_left: bool
    summary: str
    error: str = None

    def document(self):
        return {'counts': self.counts, 'waiting': self.waiting, 'work_left': self.work_left,
                'summary': self.summary, 'error': self.error}


def exit_status(results):
    if any(r.error for r in results):
        return ERROR
    return WORK_LEFT if any(r.work_left for r in results) else CONVERGED


def waiting_text(waiting):
    return ', '.join('%d waiting for %s' % (n, name) for name, n in sorted(waiting.items()))


def tell(dry_run, count, done, would):
    """'3 keys moved' after a run, 'would move 3 keys' in a dry run: done and
    would are %d templates."""
    return (would if dry_run else done) % count

