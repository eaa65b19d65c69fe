"""How much a reconciler run reads and writes (Meter, which also throttles it to
[sync] rate_limit), and its progress bar on a terminal (Progress)."""
import shutil
import sys
import time


class Meter:
    """Rows read from and written to partitions (and rows the partitions
    digested without sending them); holds reads plus writes to `rate` rows
    per second when rate > 0."""

    def __init__(self, rate=0.0):
        self.rate = rate
        self.rows_read = self.rows_written = self.rows_digested = 0
        self._next = time.monotonic()

    def read(self, rows):
        self.rows_read += rows
        self._throttle(rows)

    def wrote(self, rows):
        self.rows_written += rows
        self._throttle(rows)

    def digested(self, rows):
        """Rows a partition hashed without sending them: each counts as a tenth of
        a row read towards the rate limit."""
        self.rows_digested += rows
        self._throttle(rows / 10)

    def _throttle(self, rows):
        if self.rate <= 0 or rows <= 0:
            return
        now = time.monotonic()
        self._next = max(self._next, now) + rows / self.rate
        if self._next > now:
            time.sleep(self._next - now)


class Progress:
    """A progress bar on stderr when it is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled and sys.stderr.isatty()
        self._shown = 0.0

    def show(self, job, done, total, note=''):
        if not self.enabled or time.monotonic() - self._shown < 0.1:
            return
        self._shown = time.monotonic()
        width = 30
        filled = width * done // total if total else width
        line = '%-9s [%s%s] %3d%% %s' % (job, '#' * filled, '.' * (width - filled),
                                        100 * done // total if total else 100, note)
        sys.stderr.write('\r' + line[:shutil.get_terminal_size().columns - 1].ljust(
            shutil.get_terminal_size().columns - 1))
        sys.stderr.flush()

    def clear(self):
        if self.enabled and self._shown:
            sys.stderr.write('\r' + ' ' * (shutil.get_terminal_size().columns - 1) + '\r')
            sys.stderr.flush()
            self._shown = 0.0
