#!/usr/bin/python3
"""The dashboard of `ckptledger serve` (tools/ckptledger/dashboard/) in a real browser.

    dashboard_test.py BUILD_BIN_DIR [unittest args]

BUILD_BIN_DIR holds `ckptledger` (and `ckptledger-train`). Each test trains the demo's model
(`ckptledger train`, validation every 20 iterations, metric `acc`, save_best acc), serves its
work_dir (`ckptledger serve W --port 0`) and opens the dashboard in headless Chromium (Debian's
chromium, chromium-driver, python3-selenium) while the training runs. What the page shows is read
from `window.ckptDashboard` and the page's data-* attributes and compared with what the server
reports at the same moment (the `history?kind=validated`, `best`, `runs` and `verify` endpoints).

CKPTLEDGER_DASHBOARD_DIR=DIR serves the page, script and style from DIR (`--dashboard-dir`)
instead of the copies embedded in the binary (to iterate without a rebuild).
Exit 77 (skipped) when chromium, chromedriver or selenium are missing.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
from live_fixtures import Child, Server, take_bin_dir, train_cmd  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
EXIT_SKIP = 77

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

HOOK_CONFIG = {"interval": 20, "by_epoch": False, "max_keep_ckpts": 3, "save_best": "acc"}
DELAY_MS = 25
TOL = 1e-9

# What the page shows of the `acc` chart, read in one script (one moment).
SNAPSHOT_JS = """
const D = window.ckptDashboard;
if (!D || !D.ready) return null;
const c = D.charts.acc;
if (!c) return {points: 0, values: [], best: null, markers: [], validations: 0, attrs: {},
                lastSeq: D.lastSeq};
const curves = c.data.datasets.filter(d => d.ckptRole === 'curve');
const best = c.data.datasets.find(d => d.ckptRole === 'best');
return {
  points: curves.reduce((n, d) => n + d.data.length, 0),
  values: [].concat(...curves.map(d => d.data.map(p => [p.x, p.y]))),
  best: D.best.acc || null,
  markers: best.data.map(p => [p.x, p.y]),
  validations: D.validations.acc || 0,
  attrs: Object.assign({}, c.canvas.dataset),
  lastSeq: D.lastSeq,
};
"""


class DashboardTest(unittest.TestCase):
    """One work_dir, one server and one browser per test; all of it ended in tearDown."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckptledger-dashboard-")
        self.work = os.path.join(self.tmp, "work")
        self.config = os.path.join(self.tmp, "hook.json")
        with open(self.config, "w") as f:
            json.dump(HOOK_CONFIG, f)
        self.children = []
        self.trainings = []
        self.driver = None
        self.url = None
        self.token = None

    def tearDown(self):
        if self.driver is not None:
            with contextlib.suppress(Exception):
                self.driver.quit()
        for c in self.children:
            c.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- processes ---------------------------------------------------------------------------

    def train(self, iters, progress=False):
        """Starts `ckptledger train` (it resumes from the work_dir when there is one)."""
        cmd = train_cmd(self.work, iters, slow=True, delay_ms=DELAY_MS) + ["--config", self.config]
        if progress:
            cmd.append("--progress")
        p = Child(cmd, self.children, read_stdout=progress,
                  log=os.path.join(self.tmp, "train-%d.log" % len(self.trainings)))
        self.trainings.append(p)
        return p

    def wait_for_ledger(self, timeout=30):
        path = os.path.join(self.work, "ckptledger.sqlite")
        deadline = time.time() + timeout
        while not os.path.exists(path):
            self.assertLess(time.time(), deadline, "no ledger after %ds: %s" % (timeout, path))
            self.assertIsNone(self.trainings[-1].p.poll(), "training exited early: " + self.logs())
            time.sleep(0.05)

    def serve(self, token=None, port=0, root=False):
        args = ["--root", self.tmp] if root else [self.work]
        if os.environ.get("CKPTLEDGER_DASHBOARD_DIR"):
            args += ["--dashboard-dir", os.environ["CKPTLEDGER_DASHBOARD_DIR"]]
        if token:
            token_file = os.path.join(self.tmp, "token")
            with open(token_file, "w") as f:
                f.write(token + "\n")
            args += ["--token-file", token_file]
            self.token = token
        self.server = Server(args, self.children, port=port,
                             log=os.path.join(self.tmp, "serve.log"))
        self.url = self.server.url

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                with open(os.path.join(self.tmp, name)) as f:
                    out.append("--- %s\n%s" % (name, f.read()[-2000:]))
        return "\n".join(out)

    # ---- the server's view -------------------------------------------------------------------

    def api(self, path, headers=None):
        req = urllib.request.Request(self.url + path, headers=headers or {})
        if self.token and headers is None:
            req.add_header("Authorization", "Bearer " + self.token)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def validated(self):
        """[(step, acc)] of the ledger's validated events, in seq order."""
        return [(row["step"], row["detail"]["metrics"]["acc"])
                for row in self.api("history?kind=validated")]

    def best_acc(self):
        try:
            rows = self.api("best?metric=acc")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no best yet
                return None
            raise
        self.assertEqual(len(rows), 1, rows)
        return {"score": rows[0]["score"], "step": rows[0]["step"]}

    # ---- the browser -------------------------------------------------------------------------

    def open_dashboard(self, query=""):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--user-data-dir=" + os.path.join(self.tmp, "chromium")]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(20)
        self.driver.set_script_timeout(10)
        self.driver.get(self.url + query)
        try:
            WebDriverWait(self.driver, 20).until(lambda d: d.execute_script(
                "return !!(window.ckptDashboard && window.ckptDashboard.ready)"))
        except Exception:
            self.fail("the dashboard never became ready; " + self.browser_report())
        # Survives only as long as the page is not reloaded.
        self.driver.execute_script("window.__notReloaded = true;")

    def browser_report(self):
        parts = []
        with contextlib.suppress(Exception):
            parts.append("error line: %r" % self.driver.find_element(By.ID, "error").text)
        with contextlib.suppress(Exception):
            parts.append("console: %s" % [e["message"] for e in self.driver.get_log("browser")])
        return "; ".join(parts) + "\n" + self.logs()

    def snapshot(self):
        s = self.driver.execute_script(SNAPSHOT_JS)
        self.assertIsNotNone(s, "the dashboard is not ready; " + self.browser_report())
        self.assertTrue(self.driver.execute_script("return window.__notReloaded === true;"),
                        "the page was reloaded")
        return s

    # ---- checks ------------------------------------------------------------------------------

    def assert_points_match_ledger(self, timeout, more_than=-1):
        """Waits until the acc chart has one point per validated event of the ledger (and more
        than `more_than`), reading the ledger before and after the page so that both are of one
        moment. Never more points than events. Returns (points, snapshot)."""
        deadline = time.time() + timeout
        while True:
            before = len(self.validated())
            s = self.snapshot()
            after = self.validated()
            self.assertLessEqual(s["points"], len(after),
                                 "more points than validated events (an event drawn twice?)")
            if before == len(after) == s["points"] == s["validations"] and s["points"] > more_than:
                self.assertEqual([tuple(v) for v in s["values"]],
                                 [(step, acc) for step, acc in after],
                                 "the curve is not the ledger's (step, acc) in order")
                return s["points"], s
            if time.time() > deadline:
                self.fail("after %ds: %d points (%d validations counted) in the page, %d..%d "
                          "validated events in the ledger (wanted more than %d); %s"
                          % (timeout, s["points"], s["validations"], before, len(after),
                             more_than, self.browser_report()))
            time.sleep(0.1)

    def assert_best_marker_matches(self, timeout):
        """The page's best for acc is the `best` endpoint's, and a marker sits on it."""
        deadline = time.time() + timeout
        while True:
            b1 = self.best_acc()
            s = self.snapshot()
            b2 = self.best_acc()
            page = s["best"]
            if b1 is not None and b1 == b2 and page is not None:
                if (abs(page["score"] - b1["score"]) <= TOL and page["step"] == b1["step"]
                        and abs(float(s["attrs"].get("bestScore") or "nan") - b1["score"]) <= TOL
                        and s["attrs"].get("bestStep") == str(b1["step"])):
                    self.assertTrue(any(x == b1["step"] and abs(y - b1["score"]) <= TOL
                                        for x, y in s["markers"]),
                                    "no best marker at %s: %s" % (b1, s["markers"]))
                    return b1
            if time.time() > deadline:
                self.fail("after %ds: the page's best %s (data-* %s), the server's %s then %s; %s"
                          % (timeout, page, s["attrs"], b1, b2, self.browser_report()))
            time.sleep(0.1)

    def finish_training(self, timeout=90):
        p = self.trainings[-1].p
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail("training did not finish within %ds" % timeout)
        self.assertEqual(rc, 0, "training failed: " + self.logs())

    def assert_verify_panel_ok(self):
        self.driver.find_element(By.ID, "verify-again").click()
        server = self.api("verify")
        self.assertTrue(server["ok"], server)
        try:
            WebDriverWait(self.driver, 15).until(lambda d: d.execute_script(
                "const v = document.getElementById('verify');"
                "return v.dataset.state === 'done' && v.dataset.eventsChecked === arguments[0];",
                str(server["events_checked"])))
        except Exception:
            self.fail("verify panel: %s; %s" % (self.verify_panel(), self.browser_report()))
        panel = self.verify_panel()
        self.assertEqual(panel["ok"], "true", panel)
        self.assertEqual(panel["chainOk"], "true", panel)
        self.assertEqual(panel["problems"], "0", panel)
        self.assertEqual(panel["liveFilesChecked"], str(server["live_files_checked"]), panel)
        self.assertEqual(self.driver.find_element(By.ID, "verify-result").text, "OK")

    def verify_panel(self):
        return self.driver.execute_script(
            "return Object.assign({}, document.getElementById('verify').dataset);")

    def runs_table(self):
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#runs-body tr'))"
            ".map(tr => [tr.dataset.runId, tr.dataset.ended, tr.cells[4].title]);")

    def assert_runs_table_matches(self, timeout=10):
        deadline = time.time() + timeout
        while True:
            server = [[r["run_id"], r["ended"], r["resumed_from"] or ""]
                      for r in reversed(self.api("runs"))]
            page = self.runs_table()
            if page == server:
                return server
            if time.time() > deadline:
                self.fail("runs table %s, server %s; %s" % (page, server, self.browser_report()))
            time.sleep(0.2)

    # ---- tests -------------------------------------------------------------------------------

    def test_curve_has_one_point_per_validation_and_grows_without_reload(self):
        self.train(400)
        self.wait_for_ledger()
        self.serve()
        self.open_dashboard()
        self.assertIsNone(self.trainings[-1].p.poll(), "training finished before the page loaded")

        points, _ = self.assert_points_match_ledger(timeout=15)
        self.assert_best_marker_matches(timeout=15)
        # Live: more validations arrive through /events, the page is not reloaded.
        grown, _ = self.assert_points_match_ledger(timeout=30, more_than=points)
        self.assertGreater(grown, points)
        self.assert_best_marker_matches(timeout=15)

        self.finish_training()
        final, s = self.assert_points_match_ledger(timeout=15)
        self.assertEqual(final, 400 // HOOK_CONFIG["interval"])
        self.assertEqual(s["attrs"]["metric"], "acc")
        best = self.assert_best_marker_matches(timeout=15)
        self.assertEqual(max(acc for _, acc in self.validated()), best["score"])
        # The loss curve came along (one chart per metric).
        self.assertEqual(
            self.driver.execute_script(
                "return Array.from(document.querySelectorAll('#charts canvas'))"
                ".map(c => [c.dataset.metric, Number(c.dataset.points)]);"),
            [["acc", final], ["loss", final]])

    def test_runs_table_follows_crash_and_resume_and_verify_reports_ok(self):
        first = self.train(300, progress=True)
        self.wait_for_ledger()
        self.serve()
        self.open_dashboard()
        [(run_id, ended, _)] = self.assert_runs_table_matches()
        self.assertEqual(ended, "running")
        kill_at = "iter 150"
        first.wait_for(lambda lines: any(line.strip() == kill_at for line in lines), 60, kill_at)
        first.p.send_signal(signal.SIGKILL)
        self.assertEqual(first.p.wait(timeout=30), -signal.SIGKILL, "not killed: " + self.logs())
        self.train(300)  # resumes from the work_dir
        self.finish_training()

        runs = self.assert_runs_table_matches()
        self.assertEqual([r[1] for r in runs], ["finished", "crashed"], runs)
        self.assertEqual(runs[1][0], run_id)
        self.assertTrue(runs[0][2], "the second run resumed from nothing: %s" % runs)
        # Both runs' validations, each run a line of its own.
        self.assert_points_match_ledger(timeout=15)
        self.assertEqual(self.driver.execute_script(
            "return window.ckptDashboard.charts.acc.data.datasets"
            ".filter(d => d.ckptRole === 'curve').length;"), 2)
        self.assert_best_marker_matches(timeout=15)
        # The timeline shows saves and prunes, newest first, as they came.
        seqs = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#timeline-body tr'))"
            ".map(tr => [Number(tr.dataset.seq), tr.dataset.kind]);")
        self.assertEqual([s for s, _ in seqs], sorted((s for s, _ in seqs), reverse=True))
        self.assertTrue({"save_committed", "pruned", "best_updated"} <= {k for _, k in seqs}, seqs)
        self.assert_verify_panel_ok()

    def test_curve_survives_a_server_restart_without_gaps_or_duplicates(self):
        self.train(300)
        self.wait_for_ledger()
        self.serve()
        self.open_dashboard()
        points, _ = self.assert_points_match_ledger(timeout=15)
        port = self.server.port
        self.server.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.server.p.wait(timeout=10), 0, "serve did not end on SIGTERM")
        time.sleep(1.5)  # the training goes on meanwhile
        self.assertIsNone(self.trainings[-1].p.poll(),
                          "training finished while the server was down")
        self.serve(port=port)
        # The page's EventSource reconnects (Last-Event-ID) and catches up: no gap, no repeat.
        self.assert_points_match_ledger(timeout=30, more_than=points)
        self.finish_training()
        self.assert_points_match_ledger(timeout=15)
        self.assert_best_marker_matches(timeout=15)

    def test_page_below_w_id_reads_its_own_work_dir_in_root_mode(self):
        self.train(300)
        self.wait_for_ledger()
        self.serve(root=True)
        [served] = self.api("work_dirs")
        self.assertEqual(served["id"], "work")
        self.url += "w/work/"  # the page, and the API it fetches with relative URLs
        self.open_dashboard()
        points, _ = self.assert_points_match_ledger(timeout=15)
        self.assert_points_match_ledger(timeout=30, more_than=points)
        self.assert_best_marker_matches(timeout=15)
        self.assert_runs_table_matches()

    def test_token_in_page_url_reaches_the_api_and_the_event_stream(self):
        self.train(300)
        self.wait_for_ledger()
        self.serve(token="s3cret-t0ken")
        with self.assertRaises(urllib.error.HTTPError) as e:
            self.api("history", headers={})
        self.assertEqual(e.exception.code, 401)
        self.open_dashboard("?token=s3cret-t0ken")
        self.assertIsNone(self.trainings[-1].p.poll(), "training finished before the page loaded")
        points, _ = self.assert_points_match_ledger(timeout=15)
        # Events after the page loaded came through /events?token=...
        self.assert_points_match_ledger(timeout=30, more_than=points)
        self.finish_training()
        self.assert_points_match_ledger(timeout=15)
        self.assert_verify_panel_ok()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    take_bin_dir("dashboard_test.py")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if webdriver is None:
        missing.append("python3-selenium")
    if missing:
        print("SKIP: not installed: %s (apt-get install chromium chromium-driver python3-selenium)"
              % ", ".join(missing))
        return EXIT_SKIP
    result = unittest.main(argv=sys.argv, exit=False, verbosity=2).result
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
