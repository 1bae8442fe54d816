"""Several server processes (``PROMETHEUS_MULTIPROC_DIR``): a scrape of any process sums every process's counters, and
the cluster-wide gauges show the leader's values, not a sum."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

RECORD = """
import sys, time
from stepline.observability import enable_metrics
from stepline.storage.records import ClusterGauges
m = enable_metrics()
for _ in range(int(sys.argv[1])):
    m.run_ended("app-fn", "completed", 1000, 1250)
m.step_attempt("app-fn", "run", "failed", 0.01)
if sys.argv[2] == "leader":
    m.set_cluster(ClusterGauges([("app-fn", 7, 1000)], [("app-fn", "sleeping", 3)], []), 5000, 0.01)
elif sys.argv[2] == "former-leader":
    m.set_cluster(ClusterGauges([("app-fn", 99, 1000)], [], []), 5000, 0.01)
    m.clear_cluster()  # lost the lease: its series go to 0
time.sleep(1.5)  # the flush thread moves the values into the shared files every second
"""
RENDER = """
from stepline.observability import enable_metrics
body, _ = enable_metrics().render(None)
print(body.decode())
"""


def test_a_scrape_sums_the_processes_and_shows_the_leaders_gauges(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for count, role in ((3, "former-leader"), (4, "leader"), (5, "other")):
        done = subprocess.run([sys.executable, "-c", RECORD, str(count), role], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
    scraped = subprocess.run([sys.executable, "-c", RENDER], env=env, capture_output=True, text=True, timeout=60)
    assert scraped.returncode == 0, scraped.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(scraped.stdout) for s in f.samples}  # fmt: skip
    fn = (("function", "app-fn"),)
    assert samples[("stepline_runs_ended_total", (*fn, ("status", "completed")))] == 3 + 4 + 5
    assert samples[("stepline_run_duration_seconds_count", (*fn, ("status", "completed")))] == 12
    assert samples[("stepline_step_attempts_total", (*fn, ("kind", "run"), ("outcome", "failed")))] == 3
    # The leader's values (set after the former leader zeroed its own), not a sum over the processes.
    assert samples[("stepline_backlog_runs", fn)] == 7
    assert samples[("stepline_idle_runs", (*fn, ("reason", "sleeping")))] == 3
    assert samples[("stepline_cluster_leader", ())] == 1
    assert [v for (name, _), v in samples.items() if name == "stepline_build_info"] == [1]  # max, not a sum
