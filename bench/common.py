"""What every part of the benchmark shares: where things are, the data set's
names and sizes, the thresholds that mark a disturbed row, and the log."""
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUA_DIR = os.path.join(HERE, 'lua')
RESULTS_DIR = os.path.join(HERE, 'results')
SERVER_LOG_DIR = os.path.join(RESULTS_DIR, 'tmp')  # gitignored

TEMP_PREFIX = 'kvbench-'
KEY_FORMAT = 'k%08d'          # the same in bench/lua/common.lua
BUCKET = 'bench'
BIG_BUCKET = 'big'
CONTENT_TYPE = 'application/octet-stream'
THETA = 0.99
KIB = 1024
MIB = 1024 * 1024
DISTURBED_CORES = 0.25        # other processes' CPU during a row that makes it suspect
QUIET_CORES = 0.20            # what counts as a quiet machine before a row
ONE_WORKER = 90               # % of the server's CPU in one worker process: unbalanced


def log(message, *args):
    stamp = time.strftime('%H:%M:%S')
    print('[bench %s] %s' % (stamp, message % args if args else message), flush=True)


class BenchError(RuntimeError):
    pass
