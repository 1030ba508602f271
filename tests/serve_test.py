#!/usr/bin/python3
"""`ckptledger serve` (docs/serve.md#serve), black-box over HTTP/1.1.

    serve_test.py BUILD_BIN_DIR [unittest args]

BUILD_BIN_DIR holds `ckptledger` and `ckptledger-train`. Ledgers: a simulated run with two crashes,
two best metrics and published files (tests/data/examples/crash_twice.json + published_keys), a
trained one, one whose checkpoints live outside the work_dir, and a training that runs while a
client follows `/events`. Proves:
- every JSON endpoint (best, latest, history with since/kind/path/limit, runs, state with as_of,
  show, verify, work_dirs) answers the CLI's `--json` output for the same ledger, parsed and byte
  for byte; malformed parameters are 400 where the CLI says usage error (exit 2), 404 where it says
  nothing matched (exit 8); unknown paths 404, other methods 405, a body 413, headers over 8 KiB
  431, errors as `{"error", "status"}`; HEAD is headers only;
- `/events` (SSE): every event once, in seq order, `event:` the kind, `data` the history row; the
  stream resumes after `Last-Event-ID` or `?since=` with nothing lost or repeated; it carries a
  live training's new events, across a SIGKILL and resume of the writer, without reconnecting;
- `/metrics`: Prometheus text format 0.0.4 with the ledger's numbers;
- `/files/<path>`: a live checkpoint's bytes, ETag `"<sha256>"`, 304, ranges (206, 416); nothing
  but live checkpoints (`..`, encoded variants, the ledger, /etc/passwd, symlinks refused);
- slowloris: a request trickled byte by byte is closed within 15 s while others are served; an
  SSE stream gets `: keep-alive` after 15 s of quiet; `--max-connections` (503);
- `--token-file` (401 without the right bearer token), the default bind 127.0.0.1;
- `--root`: `/work_dirs`, `/w/<id>/...`, the top `/best` and `/latest`, a work_dir appearing later;
  a single work_dir without a ledger yet answers 404 until one appears.
Standard library only; every child runs in its own process group, killed at the end.
"""

import collections
import hashlib
import http.client
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "data", "examples")
sys.path.insert(0, os.path.join(HERE, "python"))
from live_fixtures import (Child, Server, ckptledger, cli_json, cli_raw,  # noqa: E402
                           take_bin_dir, train_cmd, wall_time)

CHILDREN = []  # every process started, killed in tearDownModule
FIX = {}  # module fixtures: dir, root, work, server


# ---------------------------------------------------------------------------------------------
# processes


def run_checked(cmd, cwd=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    if p.returncode != 0:
        raise AssertionError("%s exited %d: %s" % (" ".join(cmd), p.returncode, p.stderr[-3000:]))
    return p


# ---------------------------------------------------------------------------------------------
# HTTP


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "HTTP %d %s %r" % (self.status, self.headers, self.body[:300])


def request(srv, method, target, headers=None, body=None, conn=None, timeout=10):
    c = conn or http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        c.request(method, target, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        if conn is None:
            c.close()


def get(srv, target, **kw):
    return request(srv, "GET", target, **kw)


def raw_exchange(srv, data, timeout=5.0):
    """Sends `data` on a fresh connection and reads until the server closes it or `timeout`
    passes without anything new. Returns the bytes received."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    got = b""
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    return got


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def body_of(raw):
    return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""


class SSE:
    """A raw `GET` of an event stream over a socket: headers, chunked decoding, SSE parsing.
    Single-threaded: call pump() to read what arrived."""

    def __init__(self, srv, target, headers=None, timeout=10):
        self.target = target
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        req = "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n" % (
            target, srv.host, srv.port)
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        self.sock.sendall((req + "\r\n").encode())
        self.events = []  # {"id", "event", "data", "t"}
        self.comments = []
        self.closed = False
        self.ended = False  # the zero-length chunk
        self.body = b""
        self._cbuf = b""
        self._left = 0
        self._crlf = False
        self._lines = b""
        self._cur = {"id": None, "event": None, "data": []}
        raw = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in raw:
            if time.monotonic() > deadline:
                raise AssertionError("GET %s: no response headers within %.0f s: %r" %
                                     (target, timeout, raw))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("GET %s: closed before the headers: %r" % (target, raw))
            raw += chunk
        head, rest = raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.sock.setblocking(False)
        self._feed(rest)

    def _feed(self, data):
        if not self.chunked:
            self._body(data)
            return
        self._cbuf += data
        while self._cbuf:
            if self._crlf:
                if len(self._cbuf) < 2:
                    return
                self._cbuf = self._cbuf[2:]
                self._crlf = False
            elif self._left == 0:
                i = self._cbuf.find(b"\r\n")
                if i < 0:
                    return
                size = int(self._cbuf[:i].split(b";")[0], 16)
                self._cbuf = self._cbuf[i + 2:]
                if size == 0:
                    self.ended = True
                    self._cbuf = b""
                    return
                self._left = size
            else:
                n = min(self._left, len(self._cbuf))
                self._body(self._cbuf[:n])
                self._cbuf = self._cbuf[n:]
                self._left -= n
                if self._left == 0:
                    self._crlf = True

    def _body(self, data):
        self.body += data
        self._lines += data
        while b"\n" in self._lines:
            line, self._lines = self._lines.split(b"\n", 1)
            self._line(line.rstrip(b"\r").decode("utf-8"))

    def _line(self, line):
        if line == "":
            c = self._cur
            if c["data"] or c["id"] is not None or c["event"] is not None:
                self.events.append({"id": c["id"], "event": c["event"] or "message",
                                    "data": "\n".join(c["data"]), "t": time.monotonic(),
                                    "wall": time.time()})
            self._cur = {"id": None, "event": None, "data": []}
        elif line.startswith(":"):
            self.comments.append((line, time.monotonic()))
        else:
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._cur["data"].append(value)
            elif field in ("id", "event"):
                self._cur[field] = value

    def pump(self, timeout):
        """Reads what arrives within `timeout` s; False once the server closed the stream."""
        if self.closed:
            return False
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return True
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return True
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._feed(data)
        return True

    def ids(self):
        return [int(e["id"]) for e in self.events]

    def close(self):
        self.sock.close()


def check_latency(test, items, committed, arrived, what):
    """Events reach the follower as they commit (inotify), not at a polling period: the median
    delay from the event's time to its arrival is well under the 1-second fallback's 0.5 s."""
    delays = sorted(arrived(x) - wall_time(committed(x)) for x in items)
    test.assertGreaterEqual(len(delays), 5, what)
    median = delays[len(delays) // 2]
    test.assertLess(median, 0.3, "%s: median delay %.3f s from commit to arrival (polling?); "
                    "delays %s" % (what, median, ["%.3f" % d for d in delays]))
    test.assertLess(delays[-1], 2.0, "%s: an event arrived %.3f s after its commit" %
                    (what, delays[-1]))


def pump_until(streams, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.0f s; streams: %s" % (what, timeout, [
                (s.target, "closed" if s.closed else "open", s.ids()[-3:]) for s in streams]))
        for s in streams:
            s.pump(0.05)


def pump_for(streams, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for s in streams:
            s.pump(0.05)


# ---------------------------------------------------------------------------------------------
# fixtures


def simulate(scenario, root):
    path = root + ".scenario.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(scenario, f)
    run_checked([ckptledger(), "simulate", path, "--root", root, "-o", root + ".trace.json"])
    found = []
    for d, _, files in os.walk(root):
        if "ckptledger.sqlite" in files:
            found.append(d)
    if len(found) != 1:
        raise AssertionError("simulate wrote ledgers in %s" % found)
    return found[0]


def example(name):
    with open(os.path.join(EXAMPLES, name + ".json"), encoding="utf-8") as f:
        doc = json.load(f)
    return doc["scenario"] if "scenario" in doc else doc


def setUpModule():
    d = os.path.realpath(tempfile.mkdtemp(prefix="ckpt-serve-"))
    FIX["dir"] = d
    try:
        sc = example("crash_twice")
        sc["hook"]["published_keys"] = ["meta", "state_dict"]
        FIX["root"] = os.path.join(d, "root")
        FIX["work"] = simulate(sc, FIX["root"])
        FIX["server"] = Server([FIX["work"]], CHILDREN)
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for c in CHILDREN:
        c.stop()
    if "dir" in FIX:
        shutil.rmtree(FIX["dir"], ignore_errors=True)


def live_files(work):
    return cli_json("state", work)["live"]


def file_url(work, path):
    """/files/<path relative to work_dir>, or the absolute path without its leading /."""
    if path.startswith(work + "/"):
        return "/files/" + quote(os.path.relpath(path, work))
    return "/files/" + quote(path[1:])


class Base(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.work = FIX["work"]
        cls.srv = FIX["server"]

    def assert_json_error(self, resp, status, what):
        self.assertEqual(resp.status, status, "%s: %r" % (what, resp))
        try:
            doc = resp.json()
        except ValueError:
            self.fail("%s: the %d error body is not JSON: %r" % (what, status, resp.body))
        self.assertIsInstance(doc, dict, what)
        self.assertIsInstance(doc.get("error"), str, "%s: %r" % (what, doc))
        self.assertTrue(doc["error"], what)
        self.assertEqual(doc.get("status"), status, "%s: %r" % (what, doc))


# ---------------------------------------------------------------------------------------------


class JsonEndpointsEqualTheCli(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        w = cls.work
        hist = cli_json("history", w)
        cls.hist = hist
        mid = hist[len(hist) // 2]
        live = live_files(w)
        cls.live = live
        some = next(f for f in live if f["role"] == "regular")["path"]
        q = lambda v: quote(v, safe="")  # noqa: E731
        pairs = [
            ("/best", ["best", w]),
            ("/best?metric=acc", ["best", w, "--metric", "acc"]),
            ("/best?metric=loss", ["best", w, "--metric", "loss"]),
            ("/latest", ["latest", w]),
            ("/history", ["history", w]),
            ("/history?since=%d" % mid["seq"], ["history", w, "--since", str(mid["seq"])]),
            ("/history?since=" + q(mid["time"]), ["history", w, "--since", mid["time"]]),
            ("/history?kind=save_committed", ["history", w, "--kind", "save_committed"]),
            ("/history?kind=save_committed&kind=best_updated",
             ["history", w, "--kind", "save_committed", "--kind", "best_updated"]),
            ("/history?kind=" + q("save_committed,pruned"),
             ["history", w, "--kind", "save_committed,pruned"]),
            ("/history?limit=5", ["history", w, "--limit", "5"]),
            ("/history?kind=best_updated&limit=1",
             ["history", w, "--kind", "best_updated", "--limit", "1"]),
            ("/history?path=" + q(some), ["history", w, "--path", some]),
            ("/history?since=5&kind=pruned&limit=2",
             ["history", w, "--since", "5", "--kind", "pruned", "--limit", "2"]),
            ("/runs", ["runs", w]),
            ("/state", ["state", w]),
            ("/state?as_of=" + q("epoch:3"), ["state", w, "--as-of", "epoch:3"]),
            ("/state?as_of=" + q("iter:4"), ["state", w, "--as-of", "iter:4"]),
            ("/state?as_of=20", ["state", w, "--as-of", "20"]),
            ("/state?as_of=" + q(mid["time"]), ["state", w, "--as-of", mid["time"]]),
            ("/verify", ["verify", w]),
        ]
        for f in live:
            name = os.path.basename(f["path"])
            pairs.append(("/show?path=" + q(name), ["show", name, w]))
        pairs.append(("/show?path=" + q(some), ["show", some, w]))
        cls.pairs = pairs

    def test_every_json_endpoint_equals_the_cli_json(self):
        for target, args in self.pairs:
            with self.subTest(target=target):
                rc, out, err = cli_raw(*(args + ["--json"]), cwd=self.work)
                self.assertEqual(rc, 0, "%s: %s" % (args, err))
                r = get(self.srv, target)
                self.assertEqual(r.status, 200, "GET %s: %r" % (target, r))
                self.assertIn("json", r.headers.get("content-type", ""), target)
                self.assertEqual(r.json(), json.loads(out), "GET %s vs ckptledger %s --json" %
                                 (target, " ".join(args)))

    def test_json_bodies_are_byte_for_byte_the_cli_stdout(self):
        for target, args in self.pairs:
            with self.subTest(target=target):
                rc, out, err = cli_raw(*(args + ["--json"]), cwd=self.work)
                r = get(self.srv, target)
                self.assertEqual(r.body, out, "GET %s vs ckptledger %s --json" %
                                 (target, " ".join(args)))

    def test_filters_are_not_vacuous(self):
        # The pairs above compare something: the ledger has every kind they filter on.
        kinds = collections.Counter(r["kind"] for r in self.hist)
        for k in ("save_committed", "best_updated", "pruned", "published", "run_started"):
            self.assertGreater(kinds[k], 0, k)
        self.assertEqual(kinds["run_started"], 3)  # two crashes
        self.assertEqual({f["role"] for f in self.live} >= {"regular", "best"}, True, self.live)

    def test_work_dirs_lists_the_single_work_dir_as_dot(self):
        r = get(self.srv, "/work_dirs")
        self.assertEqual(r.status, 200, r)
        doc = r.json()
        self.assertEqual(len(doc), 1, doc)
        self.assertEqual(doc[0]["id"], ".")
        self.assertEqual(os.path.realpath(doc[0]["work_dir"]), self.work)
        self.assertEqual(os.path.realpath(doc[0]["ledger"]),
                         os.path.join(self.work, "ckptledger.sqlite"))

    def test_nothing_matched_is_404_where_the_cli_exits_8(self):
        for target, args in [("/best?metric=nope", ["best", self.work, "--metric", "nope"]),
                             ("/show?path=nope.pth", ["show", "nope.pth", self.work])]:
            with self.subTest(target=target):
                rc, _, err = cli_raw(*(args + ["--json"]))
                self.assertEqual(rc, 8, err)
                self.assert_json_error(get(self.srv, target), 404, target)

    def test_head_answers_the_headers_only(self):
        c = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=10)
        try:
            g = request(self.srv, "GET", "/best", conn=c)
            h = request(self.srv, "HEAD", "/best", conn=c)
            self.assertEqual(h.status, 200)
            self.assertEqual(h.body, b"")
            if "content-length" in h.headers:
                self.assertEqual(int(h.headers["content-length"]), len(g.body))
            # Had HEAD sent a body, the next response on this connection would be garbage.
            again = request(self.srv, "GET", "/runs", conn=c)
            self.assertEqual(again.status, 200, again)
            self.assertEqual(again.json(), cli_json("runs", self.work))
            self.assertEqual(request(self.srv, "HEAD", "/nope", conn=c).status, 404)
        finally:
            c.close()

    def test_dashboard_and_its_static_assets(self):
        r = get(self.srv, "/")
        self.assertEqual(r.status, 200, r)
        self.assertIn("text/html", r.headers.get("content-type", ""))
        r = get(self.srv, "/static/chart.js")
        self.assertEqual(r.status, 200, r)
        self.assertGreater(len(r.body), 1000)


class BadRequests(Base):
    def test_unknown_paths_are_404_json(self):
        for target in ("/nope", "/bestx", "/best/extra", "/w/x/best", "/files", "/files/",
                       "/static/nope.js"):
            with self.subTest(target=target):
                self.assert_json_error(get(self.srv, target), 404, target)

    def test_malformed_parameters_are_400_json_where_the_cli_says_usage_error(self):
        w = self.work
        cases = [
            ("/history?since=yesterday", ["history", w, "--since", "yesterday"]),
            ("/history?limit=-1", ["history", w, "--limit", "-1"]),
            ("/history?limit=abc", ["history", w, "--limit", "abc"]),
            ("/history?kind=nope", ["history", w, "--kind", "nope"]),
            ("/state?as_of=garbage", ["state", w, "--as-of", "garbage"]),
        ]
        for target, args in cases:
            with self.subTest(target=target):
                rc, _, err = cli_raw(*(args + ["--json"]))
                self.assertEqual(rc, 2, "the CLI: %s" % err)
                self.assert_json_error(get(self.srv, target), 400, target)
        for target in ("/events?since=abc", "/events?kind=nope"):
            with self.subTest(target=target):
                self.assert_json_error(get(self.srv, target), 400, target)

    def test_unknown_parameters_are_400_json(self):
        for target in ("/best?bogus=1", "/latest?x=1", "/runs?limit=3", "/verify?metric=acc",
                       "/history?limti=3", "/state?asof=3", "/metrics?x=1", "/events?bogus=1"):
            with self.subTest(target=target):
                self.assert_json_error(get(self.srv, target), 400, target)

    def test_methods_other_than_get_and_head_are_405_json(self):
        for method, target in (("POST", "/best"), ("PUT", "/best"), ("DELETE", "/history"),
                               ("PATCH", "/runs"), ("OPTIONS", "/best"),
                               ("POST", "/files/epoch_6.pth")):
            with self.subTest(method=method, target=target):
                self.assert_json_error(request(self.srv, method, target), 405,
                                       method + " " + target)

    def test_a_request_with_a_body_is_413(self):
        r = request(self.srv, "GET", "/best", body=b"hello",
                    headers={"Content-Length": "5"})
        self.assert_json_error(r, 413, "GET /best with a 5-byte body")

    def test_headers_over_8_kib_are_431(self):
        base = b"GET /best HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        one = base + b"X-Big: " + b"a" * 20480 + b"\r\n\r\n"
        many = base + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 3000) for i in range(3)) + b"\r\n"
        for what, data in (("one 20 KiB header", one), ("three 3000-byte headers", many)):
            with self.subTest(what=what):
                got = raw_exchange(self.srv, data)
                self.assertEqual(status_of(got), 431, "%s: %r" % (what, got[:300]))
        # Under the limit: served.
        ok = raw_exchange(self.srv, base + b"X-Mid: " + b"c" * 6000 + b"\r\n\r\n")
        self.assertEqual(status_of(ok), 200, ok[:300])


class Files(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.live = live_files(cls.work)

    def test_each_live_file_downloads_whole_with_its_sha256_as_etag(self):
        self.assertGreaterEqual(len(self.live), 4)
        for f in self.live:
            url = file_url(self.work, f["path"])
            with self.subTest(url=url):
                with open(f["path"], "rb") as fh:
                    data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                self.assertEqual(digest, f["sha256"])
                r = get(self.srv, url)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.body, data)
                self.assertEqual(r.headers.get("etag"), '"%s"' % digest)
                self.assertEqual(r.headers.get("accept-ranges"), "bytes")
                self.assertEqual(int(r.headers.get("content-length", -1)), len(data))

    def a_file(self):
        f = next(f for f in self.live if f["role"] == "regular")
        with open(f["path"], "rb") as fh:
            return f, file_url(self.work, f["path"]), fh.read()

    def test_if_none_match_with_the_etag_is_304(self):
        f, url, data = self.a_file()
        r = get(self.srv, url, headers={"If-None-Match": '"%s"' % f["sha256"]})
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.headers.get("etag"), '"%s"' % f["sha256"])
        r = get(self.srv, url, headers={"If-None-Match": '"%s", "%s"' % ("1" * 64, f["sha256"])})
        self.assertEqual(r.status, 304, "an If-None-Match list holding the ETag: %r" % r)
        r = get(self.srv, url, headers={"If-None-Match": '"%s"' % ("0" * 64)})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, data)

    def test_ranges_give_206_with_the_slice_and_content_range(self):
        f, url, data = self.a_file()
        n = len(data)
        self.assertGreater(n, 200)
        for rng, lo, hi in (("bytes=10-99", 10, 99), ("bytes=-5", n - 5, n - 1),
                            ("bytes=%d-" % (n - 100), n - 100, n - 1),
                            ("bytes=0-0", 0, 0), ("bytes=%d-%d" % (n - 3, n + 1000), n - 3, n - 1)):
            with self.subTest(range=rng):
                r = get(self.srv, url, headers={"Range": rng})
                self.assertEqual(r.status, 206, r)
                self.assertEqual(r.body, data[lo:hi + 1])
                self.assertEqual(r.headers.get("content-range"), "bytes %d-%d/%d" % (lo, hi, n))
                self.assertEqual(int(r.headers.get("content-length", -1)), hi - lo + 1)

    def test_a_range_outside_the_file_is_416(self):
        f, url, data = self.a_file()
        n = len(data)
        for rng in ("bytes=%d-" % n, "bytes=%d-%d" % (n + 10, n + 20)):
            with self.subTest(range=rng):
                r = get(self.srv, url, headers={"Range": rng})
                self.assertEqual(r.status, 416, r)
                self.assertNotEqual(r.body, data)

    def test_head_gives_the_headers_only(self):
        f, url, data = self.a_file()
        r = request(self.srv, "HEAD", url)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(int(r.headers.get("content-length", -1)), len(data))
        self.assertEqual(r.headers.get("etag"), '"%s"' % f["sha256"])

    def test_only_live_checkpoints_are_served(self):
        with open(os.path.join(self.work, "ckptledger.sqlite"), "rb") as fh:
            ledger_head = fh.read(100)
        live = {f["path"] for f in self.live}
        pruned = {r["path"] for r in cli_json("history", self.work, "--kind", "pruned")}
        pruned = sorted(p for p in pruned if p and p not in live)
        targets = [
            "/files/../ckptledger.sqlite",
            "/files/%2e%2e/ckptledger.sqlite",
            "/files/%2E%2E/ckptledger.sqlite",
            "/files/..%2fckptledger.sqlite",
            "/files/..%2Fckptledger.sqlite",
            "/files/ckptledger.sqlite",
            "/files/ckptledger.sqlite-wal",
            "/files/last_checkpoint",
            "/files/" + quote(self.work[1:]) + "/ckptledger.sqlite",
            "/files//etc/passwd",
            "/files/%2Fetc%2Fpasswd",
            "/files/etc/passwd",
            "/files/../../../../../../etc/passwd",
            "/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/files/....//....//etc/passwd",
        ] + [file_url(self.work, p) for p in pruned]
        for t in targets:
            with self.subTest(target=t):
                r = get(self.srv, t)
                self.assertIn(r.status, (400, 404), "GET %s: %r" % (t, r))
                self.assertFalse(r.body.startswith(b"SQLite format 3"), t)
                self.assertNotIn(ledger_head, r.body, t)
                self.assertNotIn(b"root:", r.body, t)
                self.assert_json_error(r, r.status, t)


class Symlinks(Base):
    """A work_dir of its own, changed by the test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sdir = os.path.join(FIX["dir"], "symlinks")
        cls.swork = os.path.join(cls.sdir, "work")
        os.makedirs(cls.sdir)
        run_checked(train_cmd(cls.swork, iters=60, seed=2))
        cls.ssrv = Server([cls.swork], CHILDREN)

    def test_a_symlink_named_like_a_checkpoint_is_not_served(self):
        os.symlink("/etc/passwd", os.path.join(self.swork, "evil.pth"))
        os.symlink("/etc/passwd", os.path.join(self.swork, "iter_999.pth"))
        for t in ("/files/evil.pth", "/files/iter_999.pth"):
            r = get(self.ssrv, t)
            self.assert_json_error(r, 404, t)
            self.assertNotIn(b"root:", r.body)

    def test_a_live_checkpoint_replaced_by_a_symlink_is_refused(self):
        live = [f for f in live_files(self.swork) if f["role"] == "regular"]
        self.assertGreaterEqual(len(live), 2, live)
        victim, other = live[0], live[1]
        url = file_url(self.swork, victim["path"])
        with open(victim["path"], "rb") as fh:
            data = fh.read()
        self.assertEqual(get(self.ssrv, url).body, data)  # served before
        copy = os.path.join(self.sdir, "copy-" + os.path.basename(victim["path"]))
        shutil.copyfile(victim["path"], copy)
        os.unlink(victim["path"])
        os.symlink(copy, victim["path"])  # same bytes, same size: only O_NOFOLLOW tells
        r = get(self.ssrv, url)
        self.assertGreaterEqual(r.status, 400, "GET %s through a symlink: %r" % (url, r))
        self.assertNotEqual(r.body, data)
        self.assertNotIn(data[:64], r.body)
        r = get(self.ssrv, file_url(self.swork, other["path"]))
        self.assertEqual(r.status, 200, r)


    def test_a_live_checkpoint_whose_size_changed_is_refused(self):
        f = next(f for f in live_files(self.swork) if f["role"] == "best")
        url = file_url(self.swork, f["path"])
        with open(f["path"], "rb") as fh:
            data = fh.read()
        with open(f["path"], "ab") as fh:
            fh.write(b"appended")
        r = get(self.ssrv, url)
        self.assertGreaterEqual(r.status, 400, "GET %s of a file that grew: %r" % (url, r))
        self.assertNotIn(data[:64], r.body)


class FilesOutsideTheWorkDir(Base):
    def test_a_checkpoint_in_another_out_dir_is_served_by_its_absolute_path(self):
        root = os.path.join(FIX["dir"], "outdir")
        work = simulate(example("outdir_relative"), root)
        live = live_files(work)
        outside = [f for f in live if not f["path"].startswith(work + "/")]
        self.assertTrue(outside, "outdir_relative puts the checkpoints outside the work_dir: %s"
                        % live)
        srv = Server([work], CHILDREN)
        for f in outside:
            url = "/files/" + quote(f["path"][1:])
            with self.subTest(url=url):
                with open(f["path"], "rb") as fh:
                    data = fh.read()
                r = get(srv, url)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.body, data)
                self.assertEqual(r.headers.get("etag"), '"%s"' % f["sha256"])
                rel = os.path.relpath(f["path"], work)  # ../../ckpts/exp/...: not a lookup key
                self.assertIn(get(srv, "/files/" + quote(rel)).status, (400, 404), rel)


class Events(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.hist = cli_json("history", cls.work)
        cls.last = cls.hist[-1]["seq"]

    def read_all(self, target, expected, headers=None):
        s = SSE(self.srv, target, headers=headers)
        try:
            self.assertEqual(s.status, 200, "%s: %r" % (target, s.body))
            self.assertTrue(s.headers.get("content-type", "").startswith("text/event-stream"),
                            s.headers)
            pump_until([s], lambda: len(s.events) >= len(expected), 15, target)
            pump_for([s], 1.0)  # nothing more comes: no repeats
            self.assertFalse(s.closed, "%s: the server closed the stream" % target)
            self.check_events(s.events, expected, target)
        finally:
            s.close()

    def check_events(self, events, expected, what):
        self.assertEqual([e["id"] for e in events], [str(r["seq"]) for r in expected], what)
        for e, row in zip(events, expected):
            self.assertEqual(e["event"], row["kind"], what)
            self.assertEqual(json.loads(e["data"]), row, what)

    def test_the_stream_carries_every_event_once_in_order(self):
        self.read_all("/events", self.hist)

    def test_last_event_id_resumes_after_that_event(self):
        for n in (1, self.last // 2, self.last - 1):
            with self.subTest(last_event_id=n):
                self.read_all("/events", [r for r in self.hist if r["seq"] > n],
                              headers={"Last-Event-ID": str(n)})

    def test_since_resumes_after_that_seq(self):
        n = self.last // 3
        self.read_all("/events?since=%d" % n, [r for r in self.hist if r["seq"] > n])

    def test_kind_filters_the_stream(self):
        kinds = ("save_committed", "best_updated")
        self.read_all("/events?kind=save_committed&kind=best_updated",
                      [r for r in self.hist if r["kind"] in kinds])

    def test_since_the_last_seq_sends_nothing_but_stays_open(self):
        s = SSE(self.srv, "/events?since=%d" % self.last)
        try:
            self.assertEqual(s.status, 200)
            pump_for([s], 1.5)
            self.assertEqual(s.events, [])
            self.assertFalse(s.closed)
        finally:
            s.close()


class Metrics(Base):
    SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?")
    LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*')

    def parse(self, text):
        """Prometheus text format 0.0.4: returns {name: [(labels, value)]} and {name: type}."""
        self.assertTrue(text.endswith("\n"), "the exposition ends with a line feed")
        types, helps, samples = {}, set(), collections.defaultdict(list)
        for line in text.split("\n")[:-1]:
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "HELP":
                    self.assertNotIn(parts[2], helps, "two HELP lines: " + line)
                    helps.add(parts[2])
                elif len(parts) >= 3 and parts[1] == "TYPE":
                    self.assertEqual(len(parts), 4, line)
                    self.assertNotIn(parts[2], types, "two TYPE lines: " + line)
                    self.assertNotIn(parts[2], samples, "TYPE after its samples: " + line)
                    self.assertIn(parts[3], ("counter", "gauge", "histogram", "summary",
                                             "untyped"), line)
                    types[parts[2]] = parts[3]
                continue
            m = self.SAMPLE.fullmatch(line)
            self.assertIsNotNone(m, "not a sample line: %r" % line)
            name, lbl, val = m.groups()
            labels = {}
            if lbl:
                rest = lbl.rstrip().rstrip(",")
                pos = 0
                while pos < len(rest):
                    lm = self.LABEL.match(rest, pos)
                    self.assertIsNotNone(lm, "bad labels in %r" % line)
                    self.assertNotIn(lm.group(1), labels, line)
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
                    if pos < len(rest):
                        self.assertEqual(rest[pos], ",", line)
                        pos += 1
            value = float(val)  # also NaN, +Inf
            self.assertIn(name, types, "a sample without a TYPE line before it: " + line)
            samples[name].append((labels, value))
        return samples, types

    def test_metrics_parse_and_equal_the_ledger(self):
        r = get(self.srv, "/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"), r.headers)
        self.assertIn("version=0.0.4", r.headers.get("content-type", ""))
        samples, types = self.parse(r.body.decode("utf-8"))
        for name, rows in samples.items():
            for labels, _ in rows:
                self.assertIn("work_dir", labels, "%s %s has no work_dir label" % (name, labels))
        w = self.work
        hist = cli_json("history", w)

        expected_types = {"ckptledger_best_score": "gauge", "ckptledger_live_checkpoints": "gauge",
                          "ckptledger_live_checkpoint_bytes": "gauge",
                          "ckptledger_seconds_since_last_save": "gauge",
                          "ckptledger_failed_writes_total": "counter",
                          "ckptledger_runs": "gauge", "ckptledger_events_total": "counter"}
        for name, t in expected_types.items():
            self.assertEqual(types.get(name), t, name)

        best = cli_json("best", w)
        got = {l["metric"]: (l.get("rule"), v) for l, v in samples["ckptledger_best_score"]}
        self.assertEqual(set(got), {b["metric"] for b in best})
        for b in best:
            self.assertEqual(got[b["metric"]][0], b["rule"])
            self.assertTrue(math.isclose(got[b["metric"]][1], b["score"], rel_tol=1e-9),
                            (got, b))

        live = live_files(w)
        by_kind = {l["kind"]: v for l, v in samples["ckptledger_live_checkpoints"] if v}
        self.assertEqual(by_kind, dict(collections.Counter(f["role"] for f in live)))
        (_, nbytes), = samples["ckptledger_live_checkpoint_bytes"]
        self.assertEqual(nbytes, sum(f["bytes"] for f in live))

        (_, events), = samples["ckptledger_events_total"]
        self.assertEqual(events, hist[-1]["seq"])
        (_, failed), = samples["ckptledger_failed_writes_total"]
        self.assertEqual(failed, sum(1 for e in hist if e["kind"] == "save_failed"))

        runs = cli_json("runs", w)
        outcomes = {l["outcome"]: v for l, v in samples["ckptledger_runs"] if v}
        self.assertEqual(outcomes, dict(collections.Counter(r["ended"] for r in runs)))

        (_, since), = samples["ckptledger_seconds_since_last_save"]
        last_save = [e for e in hist if e["kind"] == "save_committed"][-1]
        self.assertLess(abs(since - (time.time() - wall_time(last_save["time"]))), 10.0, since)


class SlowClients(Base):
    def test_slowloris_is_closed_within_15_s_while_others_are_served_and_idle_ones_kept(self):
        last = cli_json("history", self.work)[-1]["seq"]
        quiet = SSE(self.srv, "/events?since=%d" % last)  # for the keep-alive comment
        idle = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=10)
        self.assertEqual(request(self.srv, "GET", "/best", conn=idle).status, 200)
        t0 = time.monotonic()
        slow = socket.create_connection((self.srv.host, self.srv.port), timeout=5)
        slow.sendall(b"GET /best HTTP/1.1\r\nHo")
        trickle = b"st: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        closed_at, served, got = None, 0, b""
        i = 0
        try:
            while time.monotonic() - t0 < 25 and closed_at is None:
                try:
                    slow.sendall(trickle[i:i + 1])
                    i += 1
                except (BrokenPipeError, ConnectionResetError):
                    closed_at = time.monotonic()
                    break
                r = get(self.srv, "/latest", timeout=5)  # others are served meanwhile
                self.assertEqual(r.status, 200, r)
                served += 1
                quiet.pump(0)
                deadline = time.monotonic() + 1.0
                while closed_at is None and time.monotonic() < deadline:
                    rd, _, _ = select.select([slow], [], [], max(0, deadline - time.monotonic()))
                    if not rd:
                        break
                    try:
                        chunk = slow.recv(4096)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        closed_at = time.monotonic()
                    got += chunk  # a 408 before closing is fine
        finally:
            slow.close()
        with self.subTest("slowloris"):
            self.assertIsNotNone(closed_at, "a request trickled for 25 s was not closed; got %r"
                                 % got)
            self.assertLessEqual(closed_at - t0, 15.0, "closed after %.1f s" % (closed_at - t0))
            self.assertGreaterEqual(served, 3)
            self.assertNotIn(b" 200 ", got[:20], "the trickled request was answered: %r" % got)
        # The event stream, quiet all along, stays open and gets `: keep-alive` after 15 s.
        with self.subTest("keep-alive comment"):
            try:
                pump_until([quiet], lambda: quiet.comments or quiet.closed,
                           18 - (time.monotonic() - t0), "a keep-alive comment on a quiet stream")
                self.assertFalse(quiet.closed, "the server closed a quiet event stream")
                self.assertEqual(quiet.events, [])
                self.assertTrue(quiet.comments[0][0].startswith(": keep-alive"), quiet.comments)
            finally:
                quiet.close()
        # An idle keep-alive connection is closed after 30 s, not before: still usable now.
        with self.subTest("idle keep-alive connection"):
            idle_s = time.monotonic() - t0
            try:
                r = request(self.srv, "GET", "/best", conn=idle)
                self.assertEqual(r.status, 200, r)
            except (ConnectionError, http.client.HTTPException) as e:
                self.fail("a keep-alive connection idle for %.1f s (< 30 s) was closed: %r" %
                          (idle_s, e))
            finally:
                idle.close()


class Limits(Base):
    def test_connections_beyond_max_connections_get_503(self):
        srv = Server([self.work, "--max-connections", "2"], CHILDREN)
        held = [http.client.HTTPConnection(srv.host, srv.port, timeout=10) for _ in range(2)]
        try:
            for c in held:  # accepted and kept alive
                self.assertEqual(request(srv, "GET", "/best", conn=c).status, 200)
            r = None
            try:
                r = get(srv, "/best")
            except (ConnectionError, http.client.HTTPException) as e:
                self.fail("the third connection got no 503 but %r" % e)
            self.assert_json_error(r, 503, "a third connection with --max-connections 2")
            held[0].close()
            deadline = time.monotonic() + 5
            while True:
                r = get(srv, "/best")
                if r.status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(r.status, 200, "after a connection closed: %r" % r)
        finally:
            for c in held:
                c.close()
            srv.stop()

    def test_bind_defaults_to_127_0_0_1(self):
        self.assertEqual(self.srv.addr, "127.0.0.1", self.srv.first_line)
        self.assertEqual(self.srv.first_line, "ckptledger: serving http://127.0.0.1:%d/" %
                         self.srv.port)
        try:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.connect(("10.255.255.255", 1))
            ip = u.getsockname()[0]
            u.close()
        except OSError:
            ip = None
        if ip and not ip.startswith("127.") and ip != "0.0.0.0":
            with self.assertRaises(OSError, msg="reachable on %s" % ip):
                socket.create_connection((ip, self.srv.port), timeout=3).close()


class Token(Base):
    def test_token_file_requires_the_bearer_token(self):
        tf = os.path.join(FIX["dir"], "token")
        with open(tf, "w") as f:
            f.write("s3cret-token\nsecond line is ignored\n")
        srv = Server([self.work, "--token-file", tf], CHILDREN)
        try:
            ok = {"Authorization": "Bearer s3cret-token"}
            for target in ("/best", "/history", "/metrics", "/files/x.pth", "/events",
                           "/work_dirs"):
                with self.subTest(target=target):
                    self.assert_json_error(get(srv, target), 401, target + " without a token")
            for bad in ("Bearer wrong", "Bearer s3cret-token-and-more", "Bearer s3cret-toke",
                        "Basic s3cret-token", "s3cret-token", "Bearer "):
                with self.subTest(header=bad):
                    self.assert_json_error(get(srv, "/best", headers={"Authorization": bad}),
                                           401, bad)
            r = get(srv, "/best", headers=ok)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json(), cli_json("best", self.work))
            f = next(f for f in live_files(self.work) if f["role"] == "regular")
            self.assertEqual(get(srv, file_url(self.work, f["path"]), headers=ok).status, 200)
            s = SSE(srv, "/events", headers=ok)
            s.close()
            self.assertEqual(s.status, 200)
            # Static assets are exempt.
            self.assertNotEqual(get(srv, "/static/chart.js").status, 401)
        finally:
            srv.stop()


class EmptyWorkDir(Base):
    def test_no_ledger_yet_is_404_until_one_appears(self):
        e = os.path.join(FIX["dir"], "empty")
        os.mkdir(e)
        srv = Server([e], CHILDREN)
        for t in ("/best", "/history", "/runs", "/state"):
            with self.subTest(target=t):
                self.assert_json_error(get(srv, t), 404, t + " with no ledger yet")
        run_checked(train_cmd(e, iters=20, seed=3))
        for t, verb in (("/best", "best"), ("/history", "history"), ("/runs", "runs")):
            with self.subTest(target=t):
                r = get(srv, t)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json(), cli_json(verb, e))
        srv.stop()


class WriterRestarts(Base):
    """The server's many connections to one ledger (one per thread, a Catalog per `--root`
    request) keep their locks: a training run that starts and exits while the server reads must
    not take the ledger's -wal and -shm away from it."""

    def test_every_endpoint_equals_the_cli_after_two_more_training_runs(self):
        root = tempfile.mkdtemp(prefix="ckpt-serve-restart-")
        self.addCleanup(shutil.rmtree, root, True)
        work = os.path.join(root, "exp")
        run_checked(train_cmd(work, iters=40, seed=5))
        srv = Server(["--root", root], CHILDREN)
        self.addCleanup(srv.stop)
        for _ in range(3):  # each opens and closes a Catalog of the ledger in the server
            self.assertEqual(get(srv, "/best").status, 200)
        self.assertEqual(get(srv, "/w/exp/history").status, 200)
        events = SSE(srv, "/w/exp/events")
        self.addCleanup(events.close)
        for iters in (80, 120):  # resumes, then exits: the last connection it sees closes
            run_checked(train_cmd(work, iters=iters, seed=5))
            for _ in range(3):
                self.assertEqual(get(srv, "/best").status, 200)
        for ep in ("history", "best", "runs", "state", "verify"):
            r = get(srv, "/w/exp/" + ep)
            self.assertEqual(r.status, 200, (ep, r))
            self.assertEqual(r.json(), cli_json(ep, work), ep)
        self.assertEqual(get(srv, "/best").json(), cli_json("best", "--root", root))
        last = cli_json("history", work)[-1]["seq"]
        pump_until([events], lambda: events.ids() and events.ids()[-1] == last, 20,
                   "the event stream reaches seq %d" % last)


class RootMode(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = FIX["root"]
        cls.train_a = os.path.join(cls.root, "train_a")
        run_checked(train_cmd(cls.train_a, iters=60, seed=4))
        cls.rsrv = Server(["--root", cls.root], CHILDREN)
        cls.ids = {os.path.relpath(cls.work, cls.root): cls.work, "train_a": cls.train_a}

    def test_work_dirs_lists_every_ledger_below_root(self):
        r = get(self.rsrv, "/work_dirs")
        self.assertEqual(r.status, 200, r)
        got = {d["id"]: d for d in r.json()}
        self.assertTrue(set(self.ids) <= set(got), (set(self.ids), got))
        for i, w in self.ids.items():
            self.assertEqual(os.path.realpath(got[i]["work_dir"]), w)
            self.assertEqual(os.path.realpath(got[i]["ledger"]),
                             os.path.join(w, "ckptledger.sqlite"))

    def test_each_work_dirs_endpoints_equal_the_cli(self):
        for i, w in self.ids.items():
            for ep, verb in (("best", "best"), ("latest", "latest"), ("history", "history"),
                             ("runs", "runs"), ("state", "state"), ("verify", "verify")):
                target = "/w/%s/%s" % (i, ep)
                with self.subTest(target=target):
                    r = get(self.rsrv, target)
                    self.assertEqual(r.status, 200, r)
                    self.assertEqual(r.json(), cli_json(verb, w), target)
            target = "/w/%s/best?metric=acc" % i
            self.assertEqual(get(self.rsrv, target).json(),
                             cli_json("best", w, "--metric", "acc"), target)
            f = next(f for f in live_files(w) if f["role"] == "regular")
            with open(f["path"], "rb") as fh:
                r = get(self.rsrv, "/w/%s%s" % (i, file_url(w, f["path"])))
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.body, fh.read())

    def test_top_best_and_latest_are_the_roots(self):
        for target, args in (("/best", ["best", "--root", self.root]),
                             ("/latest", ["latest", "--root", self.root])):
            with self.subTest(target=target):
                rc, out, err = cli_raw(*(args + ["--json"]))
                self.assertEqual(rc, 0, err)
                r = get(self.rsrv, target)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json(), json.loads(out), target)

    def test_unknown_work_dir_is_404(self):
        self.assert_json_error(get(self.rsrv, "/w/nope/best"), 404, "/w/nope/best")

    def test_root_metrics_label_every_work_dir(self):
        r = get(self.rsrv, "/metrics")
        self.assertEqual(r.status, 200, r)
        text = r.body.decode()
        for i, w in self.ids.items():
            self.assertTrue(re.search(r'^ckptledger_events_total\{[^}]*work_dir="[^"]*%s"[^}]*\} '
                                      % re.escape(os.path.basename(w)), text, re.M),
                            "no events_total for %s:\n%s" % (i, text))

    def test_a_work_dir_appearing_later_is_served(self):
        late = os.path.join(self.root, "late")
        run_checked(train_cmd(late, iters=20, seed=5))
        deadline = time.monotonic() + 15
        while True:
            ids = {d["id"] for d in get(self.rsrv, "/work_dirs").json()}
            if "late" in ids or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertIn("late", ids)
        r = get(self.rsrv, "/w/late/best")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), cli_json("best", late))


class Protocol(Base):
    def test_pipelined_requests_are_answered_in_order(self):
        got = raw_exchange(self.srv, b"GET /best HTTP/1.1\r\nHost: x\r\n\r\n"
                                     b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                                     b"GET /runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3})", got), [b"200", b"404", b"200"], got)

    def test_concurrent_clients_all_get_the_same_answers(self):
        f = next(f for f in live_files(self.work) if f["role"] == "regular")
        with open(f["path"], "rb") as fh:
            data = fh.read()
        want = {"/history": json.loads(cli_raw("history", self.work, "--json")[1]),
                "/best": cli_json("best", self.work)}
        url = file_url(self.work, f["path"])
        errors = []

        def client(i):
            try:
                c = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=20)
                for k in range(5):
                    t = ("/history", "/best", url)[(i + k) % 3]
                    r = request(self.srv, "GET", t, conn=c)
                    ok = r.status == 200 and (r.body == data if t == url else r.json() == want[t])
                    if not ok:
                        errors.append((t, r))
                c.close()
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(("client %d" % i, repr(e)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])

    def test_serving_the_ledger_file_equals_serving_its_work_dir(self):
        srv = Server([os.path.join(self.work, "ckptledger.sqlite")], CHILDREN)
        try:
            for t, verb in (("/best", "best"), ("/history", "history"), ("/state", "state")):
                r = get(srv, t)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json(), cli_json(verb, self.work), t)
        finally:
            srv.stop()


class BadLedger(Base):
    def test_a_corrupt_or_foreign_ledger_is_500_naming_the_ledger(self):
        bad = os.path.join(FIX["dir"], "bad")
        os.mkdir(bad)
        ledger = os.path.join(bad, "ckptledger.sqlite")
        with open(ledger, "wb") as f:
            f.write(os.urandom(8192))  # not an SQLite database
        rc, _, err = cli_raw("best", bad, "--json")
        self.assertEqual(rc, 4, err)
        srv = Server([bad], CHILDREN)
        try:
            for t in ("/best", "/history", "/runs"):
                with self.subTest(target=t):
                    r = get(srv, t)
                    self.assert_json_error(r, 500, t)
                    self.assertIn(ledger, r.json()["error"])
        finally:
            srv.stop()


class LiveTraining(Base):
    def test_events_stream_follows_a_training_across_sigkill_and_resume(self):
        live = os.path.join(FIX["dir"], "live")
        os.mkdir(live)
        t1 = Child(train_cmd(live, slow=True), CHILDREN)
        deadline = time.monotonic() + 60
        while True:
            rc, out, _ = cli_raw("history", live, "--json")
            if rc == 0 and json.loads(out):
                break
            self.assertLess(time.monotonic(), deadline, "no ledger: " + t1.stderr())
            time.sleep(0.1)
        srv = Server([live], CHILDREN)
        n0 = len(cli_json("history", live))
        a = SSE(srv, "/events")  # never reconnected
        b = SSE(srv, "/events")  # reconnected with Last-Event-ID, then with ?since=
        parts = []
        try:
            def saves(s, other_than=None, after=0):
                return sum(1 for e in s.events if e["event"] == "save_committed" and
                           int(e["id"]) > after and
                           (other_than is None or json.loads(e["data"])["run_id"] != other_than))

            pump_until([a, b], lambda: saves(a, after=n0) >= 2, 60,
                       "2 new save_committed on the stream")
            self.assertIsNone(t1.p.poll(), "the training finished before the kill (too fast)")
            t_kill = time.monotonic()
            t1.killpg(signal.SIGKILL)
            t1.p.wait(10)
            pushed = [e for e in a.events if int(e["id"]) > n0 and e["t"] < t_kill]
            self.assertTrue(pushed, "no event committed after the stream opened arrived on it "
                            "while the training ran")
            run1 = json.loads(a.events[0]["data"])["run_id"]

            parts.append(b.events)
            b.close()
            b = SSE(srv, "/events", headers={"Last-Event-ID": b.events[-1]["id"]})
            t2 = Child(train_cmd(live, slow=True), CHILDREN)
            pump_until([a, b], lambda: saves(a, other_than=run1) >= 1, 60,
                       "a save_committed of the resumed run on the same stream")
            parts.append(b.events)
            b.close()
            b = SSE(srv, "/events?since=%s" % b.events[-1]["id"])
            pump_until([a, b], lambda: t2.p.poll() is not None, 120, "the resumed training's end")
            self.assertEqual(t2.p.wait(), 0, t2.stderr())
            hist = cli_json("history", live)
            last = str(hist[-1]["seq"])
            self.assertEqual(hist[-1]["kind"], "run_finished")
            pump_until([a, b], lambda: (a.events and a.events[-1]["id"] == last and
                                        b.events and b.events[-1]["id"] == last),
                       15, "the last event on both streams")
            pump_for([a, b], 1.0)
            parts.append(b.events)
            self.assertFalse(a.closed)
            Events.check_events(self, a.events, hist, "the stream never reconnected")
            check_latency(self, [e for e in a.events if int(e["id"]) > n0],
                          lambda e: json.loads(e["data"])["time"], lambda e: e["wall"],
                          "/events")
            joined = [e for p in parts for e in p]
            Events.check_events(self, joined, hist,
                                "the stream reconnected with Last-Event-ID, then ?since=")
            self.assertEqual(sum(1 for r in hist if r["kind"] == "run_started"), 2)
        finally:
            a.close()
            b.close()
            srv.stop()


def main():
    take_bin_dir("serve_test.py")
    unittest.main()


if __name__ == "__main__":
    main()
