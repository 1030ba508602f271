"""What the black-box tests of a live ledger share: tests/watch_test.py, tests/serve_test.py and
tests/dashboard_test.py (each run as `X_test.py BUILD_BIN_DIR [unittest args]`).

take_bin_dir() reads BUILD_BIN_DIR from the command line; then cli_raw() / cli_json() run the CLI,
train_cmd() is a `ckptledger train` command line, Child runs a process in its own process group
(stdout read by a thread where asked) and Server is `ckptledger serve ... --port 0` with the
address it prints. Standard library only.
"""

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

BIN_DIR = None
CK = None  # BIN_DIR/ckptledger
DELAY_MS = 30  # --iter-delay-ms of a slow training
SLOW_ITERS = 200  # with DELAY_MS: ~6 s of training, a save every 20 iterations


def take_bin_dir(script):
    """Takes BUILD_BIN_DIR out of sys.argv (what is left is unittest's), checks that it holds
    `ckptledger` and `ckptledger-train` and sets BIN_DIR and CK; exits with a message if not."""
    global BIN_DIR, CK
    if len(sys.argv) < 2:
        sys.exit("usage: %s BUILD_BIN_DIR [unittest args]" % script)
    BIN_DIR = os.path.abspath(sys.argv.pop(1))
    CK = os.path.join(BIN_DIR, "ckptledger")
    for exe in (CK, os.path.join(BIN_DIR, "ckptledger-train")):
        if not os.access(exe, os.X_OK):
            sys.exit("%s: %s is missing" % (script, exe))
    return BIN_DIR


def ckptledger():
    return CK


def cli_raw(*args, cwd=None):
    """The CLI's (exit status, stdout bytes, stderr text)."""
    p = subprocess.run([CK] + list(args), capture_output=True, cwd=cwd, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def cli_json(*args, cwd=None):
    """`ckptledger ARGS --json`, parsed; an AssertionError unless it exits 0."""
    rc, out, err = cli_raw(*(list(args) + ["--json"]), cwd=cwd)
    if rc != 0:
        raise AssertionError("ckptledger %s exited %d: %s" % (" ".join(args), rc, err))
    return json.loads(out)


def train_cmd(work_dir, iters=None, slow=False, seed=0, delay_ms=DELAY_MS):
    """`ckptledger train` on work_dir (it resumes from the ledger there, if any): slow, `iters`
    (default SLOW_ITERS) iterations with `delay_ms` after each, to be followed live; otherwise
    `iters` (default 60) at full speed."""
    cmd = [CK, "train", "--work-dir", work_dir, "--seed", str(seed)]
    if slow:
        cmd += ["--iters", str(iters or SLOW_ITERS), "--iter-delay-ms", str(delay_ms)]
    else:
        cmd += ["--iters", str(iters or 60)]
    return cmd


def wall_time(iso):
    """A ledger time (2024-01-02T03:04:05.678Z) as seconds since the epoch."""
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


class Child:
    """A child process in its own process group, appended to `registry` (a list whose children
    the test stops at its end). stderr goes to a temporary file, or with `log` to that file (and
    stdout too, unless read). With read_stdout, a thread reads stdout line by line."""

    def __init__(self, cmd, registry, read_stdout=False, cwd=None, log=None):
        self.cmd = cmd
        self.err = open(log, "a+b") if log else tempfile.TemporaryFile()
        if read_stdout:
            out = subprocess.PIPE
        else:
            out = self.err if log else subprocess.DEVNULL
        self.p = subprocess.Popen(cmd, stdout=out, stderr=self.err, stdin=subprocess.DEVNULL,
                                  start_new_session=True, cwd=cwd)
        registry.append(self)
        self.lines = []  # complete lines (text, without the newline)
        self.arrived = []  # when each line was read (time.time())
        self.partial = None  # a last line without newline (a process killed mid-write)
        self.cond = threading.Condition()
        self.eof = False
        self.thread = None
        if read_stdout:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self):
        for raw in iter(self.p.stdout.readline, b""):
            with self.cond:
                if raw.endswith(b"\n"):
                    self.lines.append(raw[:-1].decode("utf-8", "replace"))
                    self.arrived.append(time.time())
                else:
                    self.partial = raw.decode("utf-8", "replace")
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, pred, timeout, what):
        """Waits until pred(lines) is true; fails with `what` and the output on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.eof and not pred(self.lines)):
                    if self.eof:
                        self.p.wait(5)
                    raise AssertionError("%s: not seen after %.0f s (exit %s, eof %s)\n%s\n%s" % (
                        what, timeout, self.p.poll(), self.eof, self.tail(), self.stderr()))
                self.cond.wait(min(left, 0.2))

    def snapshot(self):
        with self.cond:
            return list(self.lines)

    def finish(self, timeout):
        """Waits for the exit and the end of stdout; returns the exit status."""
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s still running after %.0f s\n%s\n%s" % (
                " ".join(self.cmd), timeout, self.tail(), self.stderr()))
        if self.thread:
            self.thread.join(10)
        return rc

    def killpg(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def stderr(self):
        self.err.seek(0)
        return "stderr: " + self.err.read().decode("utf-8", "replace")[-3000:]

    def tail(self):
        with self.cond:
            return "stdout (last lines): " + "\n".join(self.lines[-5:])

    def stop(self):
        """SIGTERM to the group, SIGKILL 5 s later (and to stray members of the group anyway)."""
        if self.p.poll() is None:
            self.killpg(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.p.wait(5)
        self.killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(10)
        if self.thread:
            self.thread.join(5)
        for f in (self.p.stdout, self.err):
            if f and not f.closed:
                f.close()


class Server(Child):
    """`ckptledger serve ARGS --port PORT` (0: any free one); reads `ckptledger: serving
    http://ADDR:PORT/` from the first stdout line into first_line, url, addr, port and host (the
    address to connect to)."""

    LINE = re.compile(r"ckptledger: serving (http://(\[[0-9a-fA-F:.]+\]|[0-9.]+|[^:/]+):(\d+)/)")

    def __init__(self, args, registry, port=0, cwd=None, log=None):
        super().__init__([CK, "serve"] + list(args) + ["--port", str(port)], registry,
                         read_stdout=True, cwd=cwd, log=log)
        with self.cond:
            self.cond.wait_for(lambda: self.lines or self.eof, 20)
            first = self.lines[0] if self.lines else None
        if first is None:
            self.stop()
            raise AssertionError("%s printed no first line (exit %s): %s" %
                                 (" ".join(self.cmd), self.p.poll(), self.stderr()))
        self.first_line = first
        m = self.LINE.fullmatch(self.first_line)
        if not m:
            self.stop()
            raise AssertionError("first stdout line %r is not `ckptledger: serving "
                                 "http://ADDR:PORT/`" % self.first_line)
        self.url, self.addr, self.port = m.group(1), m.group(2), int(m.group(3))
        self.host = "127.0.0.1" if self.addr in ("0.0.0.0", "127.0.0.1") else self.addr.strip("[]")
