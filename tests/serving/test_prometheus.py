"""A real Prometheus server scrapes `Runtime.serve_metrics`; the dashboard's queries have data.

Runs the Debian `prometheus` binary on loopback with a temporary config and TSDB, scraping
every second; the first scraped value is queryable after ~6 s. The server is terminated in
a `finally`. Skipped only when the binary is absent (CI installs it).
"""

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
import torch

from elastic.errors import BudgetInfeasible, InvalidInput
from elastic.serving import Runtime, dashboard_path

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the Prometheus server binary is not installed (Debian package 'prometheus')",
    ),
]

GENEROUS_MS = 60_000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def poll(fn, timeout: float, what: str):
    """Call fn every 0.5 s until it returns a truthy value; fail after `timeout` seconds."""
    last = None
    for _ in range(int(timeout / 0.5)):
        try:
            last = fn()
            if last:
                return last
        except (OSError, AssertionError) as e:  # not up yet, or not scraped yet
            last = e
        time.sleep(0.5)
    pytest.fail(f"gave up after ~{timeout} s waiting for {what}; last: {last!r}")


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(dashboard_path().read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "30s").replace("$instance", ".+")
            out.append((panel["title"], expr))
    return out


def test_prometheus_scrapes_the_runtime_and_every_dashboard_panel_has_data(served_model, served_profile, tmp_path):
    rt = Runtime(served_model, max_batch_size=8, profile=served_profile)
    metrics_port = rt.serve_metrics()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: elastic\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed in the finally)
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    traffic = None
    try:
        poll(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=5).status == 200,
            60,
            "Prometheus to be ready",
        )

        # a known mix: 20 answered in time, 2 late (best effort), 5 infeasible, 3 invalid
        x = torch.randn(3, 32, 32)
        futures = [rt.submit(x, GENEROUS_MS) for _ in range(20)]
        futures += [rt.submit(x, 1e-6, best_effort=True) for _ in range(2)]
        for _ in range(5):
            with pytest.raises(BudgetInfeasible):
                rt.submit(x, 1e-6)
        for _ in range(3):
            with pytest.raises(InvalidInput):
                rt.submit(torch.full((3, 32, 32), float("nan")), GENEROUS_MS)
        for f in futures:
            f.result(timeout=60)
        expected = {"ok": 20, "late": 2, "rejected": 8, "shed": 0, "error": 0}

        def counters():
            got = {r["metric"]["outcome"]: float(r["value"][1]) for r in query(prom_port, "elastic_requests_total")}
            return got if got == expected else None

        poll(counters, 60, f"Prometheus to report request counters {expected}")
        reasons = {r["metric"]["reason"]: float(r["value"][1]) for r in query(prom_port, "elastic_rejections_total")}
        assert reasons == {"infeasible": 5.0, "invalid": 3.0, "overloaded": 0.0, "closed": 0.0}

        def steady_traffic():
            while not stop.is_set():
                rt.infer(torch.randn(3, 32, 32), GENEROUS_MS)
                time.sleep(0.05)

        traffic = threading.Thread(target=steady_traffic, daemon=True)
        traffic.start()
        for title, expr in dashboard_queries():

            def has_data(expr=expr):
                result = query(prom_port, expr)
                values = [float(r["value"][1]) for r in result]
                return result if any(v == v for v in values) else None  # some value not NaN

            poll(has_data, 60, f"panel {title!r} query {expr!r} to return data")
    finally:
        stop.set()
        if traffic is not None:
            traffic.join(timeout=30)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
        rt.close()
