"""A feed reader attached to a row (Row.feed): it follows the bucket's
changes as Server-Sent Events while wrk writes, and a probe writer PUTs a key
of its own every PROBE_INTERVAL; the feed's lag is, for each probe, the time
from its acknowledgement to its delivery on the stream."""
import json
import threading
import time

import requests

PROBE_INTERVAL = 0.05   # seconds between probe writes: 20 a second, beside wrk's thousands


class FeedReader:
    def __init__(self, url, bucket):
        self.url, self.bucket = url.rstrip('/'), bucket
        self.stop = threading.Event()
        self.probes_done = threading.Event()   # lag(): no probe written while it waits for deliveries
        self.acknowledged = {}   # probe ETag: when its PUT was answered (monotonic)
        self.delivered = {}      # ETag: when the stream delivered it
        self.changes = 0
        self.threads = [threading.Thread(target=self.follow, daemon=True),
                        threading.Thread(target=self.probe, daemon=True)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def follow(self):
        last_id = None
        while not self.stop.is_set():
            headers = {'Accept': 'text/event-stream'}
            if last_id:
                headers['Last-Event-ID'] = last_id
            try:
                with requests.get('%s/buckets/%s/changes' % (self.url, self.bucket), headers=headers,
                                  stream=True, timeout=10) as response:
                    for line in response.iter_lines(decode_unicode=True):
                        if self.stop.is_set():
                            return
                        if line.startswith('data:'):
                            change = json.loads(line[5:])
                            self.changes += 1
                            self.delivered.setdefault(change.get('etag'), time.monotonic())
                        elif line.startswith('id:'):
                            last_id = line[3:].strip()
            except requests.RequestException:
                time.sleep(0.1)

    def probe(self):
        session, i = requests.Session(), 0
        time.sleep(1.0)   # the stream is open
        while not self.stop.wait(PROBE_INTERVAL) and not self.probes_done.is_set():
            i += 1
            try:
                response = session.put('%s/buckets/%s/keys/feed-probe-%d' % (self.url, self.bucket, i % 100),
                                       data=b'probe', headers={'Content-Type': 'text/plain'}, timeout=10)
            except requests.RequestException:
                continue
            if response.status_code in (200, 201):
                self.acknowledged[response.headers['ETag']] = time.monotonic()

    def lag(self):
        """{lag_p50_ms, lag_p99_ms, lag_samples, lag_missing, feed_changes} over the probes acknowledged."""
        self.probes_done.set()
        time.sleep(2.0)   # the last probes' deliveries
        lags = sorted(1000 * (self.delivered[etag] - acked) for etag, acked in list(self.acknowledged.items())
                      if etag in self.delivered)
        at = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] if lags else None
        return dict(lag_p50_ms=at(0.5), lag_p99_ms=at(0.99), lag_samples=len(lags),
                    lag_missing=len(self.acknowledged) - len(lags), feed_changes=self.changes)
