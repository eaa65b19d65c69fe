"""One picture per front end, not per worker: every worker process of a front
end (serve.py starts several) has a failure detector of its own (health.py).
Each writes what it saw of the partitions, when that changes, to a file of its
own in the directory the front end's workers share (the one serve.py makes
for the metrics, PROMETHEUS_MULTIPROC_DIR); the worker answering GET /cluster
or GET /metrics reads the files of the live workers and keeps, for each
partition, the newest observation: the rule gossip applies between front
ends.  Without that directory (one process: tests, `python controller.py`)
the process's own view is the front end's.
"""
import json
import os
import re

SHARED = 'PROMETHEUS_MULTIPROC_DIR'
FILE = re.compile(r'health-(\d+)\.json$')


def _directory():
    return os.environ.get(SHARED)


def publish(view):
    """Write this worker's view ({partition: observation}) for the others."""
    directory = _directory()
    if not directory:
        return
    path = os.path.join(directory, 'health-%d.json' % os.getpid())
    try:
        with open(path + '.tmp', 'w') as f:
            json.dump(view, f)
        os.replace(path + '.tmp', path)   # a reader sees the old file or the new one
    except OSError:
        pass   # the front end's picture is this worker's own until the next change


def front_end_view(view):
    """This worker's view merged with every live worker's: for each partition
    the observation made last."""
    directory = _directory()
    if not directory:
        return view
    merged = dict(view)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return view
    for entry in entries:
        match = FILE.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or not pid_alive(int(match.group(1))):
            continue
        try:
            with open(entry.path) as f:
                theirs = json.load(f)
        except (OSError, ValueError):
            continue
        for name, seen in theirs.items():
            try:
                newer = name in merged and float(seen['observed']) > float(merged[name]['observed'] or 0)
            except (KeyError, TypeError, ValueError):
                continue
            if newer:
                merged[name] = seen
    return merged


def pid_alive(pid):
    """Is the process running (a dead worker's file is left behind)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
