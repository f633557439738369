"""The dashboard (shoal/dashboard/) against a real cluster started as
`shoal start --head` starts it, running a workload: its pages in a real
headless browser (Debian's chromium driven by Selenium through Debian's
chromedriver), its JSON API and Prometheus endpoint over HTTP, and the
token it demands. Browser tests skip, saying why, where chromium or
chromedriver is missing (.ci/run installs both).

Set SHOAL_SCREENSHOTS=DIR to keep screenshots of the main pages there
(docs/images/dashboard-*.png were made so).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from urllib.parse import urlparse

import cloudpickle
import numpy as np
import pytest

import shoal
from shoal.cluster import launch
from shoal.cluster.state import StateDir
from shoal.util import state
from shoal.util.placement_group import placement_group

from .. import conftest
from ..conftest import touch, wait_for, wait_for_file

pytest.importorskip("aiohttp", reason="the dashboard extra (aiohttp) is not installed")
pytest.importorskip("prometheus_client", reason="the dashboard extra is not installed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(conftest)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


# ---------------------------------------------------------------- workload
@shoal.remote
def held_step(gate):
    print("held step is waiting")
    return wait_for_file(gate, 120)


class BadRecord(ValueError):
    pass


@shoal.remote
def parse_record(text):
    if not text.startswith("{"):
        raise BadRecord(f"not a JSON record: {text!r}")
    return json.loads(text)


@shoal.remote
class Trainer:
    def step(self, i):
        from shoal.util.metrics import Counter
        Counter("steps_done", "training steps", tag_keys=("model",)).inc(tags={"model": "mlp"})
        print(f"trainer step {i}")
        return i


@pytest.fixture
def dashboard_cluster(cluster_env, tmp_path):
    """A head with a 2-CPU node and a dashboard on a free port; this
    process connected as a driver. Yields (url, token)."""
    out = launch.start_head("127.0.0.1", 0, num_cpus=2, dashboard_port=0)
    assert out["dashboard"], out
    token = open(out["token_file"]).read().strip()
    shoal.init(address="auto")
    try:
        yield out["dashboard"], token
    finally:
        shoal.shutdown()


def run_workload(tmp_path):
    gate = str(tmp_path / "gate")
    running = held_step.remote(gate)
    with pytest.raises(BadRecord):
        shoal.get(parse_record.remote("garbage"), timeout=60)
    trainer = Trainer.options(name="trainer").remote()
    assert shoal.get([trainer.step.remote(i) for i in range(3)], timeout=60) == [0, 1, 2]
    wait_for(lambda: any(t["state"] == "RUNNING" for t in shoal.util.state.list_tasks(
        filters=[("name", "=", "held_step")])), timeout=30, what="the held task to run")
    return gate, running, trainer


def http(url, token=None, data=None):
    req = urllib.request.Request(url, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


# --------------------------------------------------------------------- HTTP
@pytest.mark.timeout(120)
def test_the_api_and_metrics_need_the_token_and_show_the_workload(dashboard_cluster, tmp_path):
    url, token = dashboard_cluster
    gate, running, trainer = run_workload(tmp_path)
    for path in ("/api/tasks", "/metrics", "/api/nodes"):
        assert http(url + path)[0] == 401
        assert http(url + path, token="wrong")[0] == 401
    status, _, body = http(url + "/api/tasks?limit=100", token)
    assert status == 200
    tasks = {t["name"]: t for t in json.loads(body)}
    assert tasks["held_step"]["state"] == "RUNNING"
    assert tasks["parse_record"]["error_type"] == "BadRecord"
    status, _, body = http(url + "/api/tasks?state=FAILED", token)
    assert [t["name"] for t in json.loads(body)] == ["parse_record"]
    failed = json.loads(http(url + "/api/tasks/" + tasks["parse_record"]["task_id"], token)[2])
    assert "Traceback" in failed["error_traceback"] and "BadRecord" in failed["error_traceback"]
    assert http(url + "/api/tasks?colour=red", token)[0] == 400
    assert http(url + "/api/bogus", token)[0] == 404

    held_logs = url + f"/api/logs?task_id={tasks['held_step']['task_id']}"
    wait_for(lambda: http(held_logs, token) == (200, "text/plain; charset=utf-8",
                                                "held step is waiting\n"),
             timeout=30, what="the held task's output")
    (actor,) = json.loads(http(url + "/api/actors?class_name=Trainer", token)[2])
    logs = http(url + f"/api/logs?actor_id={actor['actor_id']}", token)[2]
    assert logs == "trainer step 0\ntrainer step 1\ntrainer step 2\n"

    def scraped():
        text = http(url + "/metrics", token)[2]
        return 'shoal_steps_done_total{NodeId="' in text and 'model="mlp"} 3.0' in text and text
    text = wait_for(scraped, timeout=30, interval=0.2, what="the user metric at /metrics")
    assert "shoal_node_tasks{" in text and "shoal_node_object_store_capacity_bytes{" in text
    assert "shoal_cluster_resources_total{resource=\"CPU\"} 2.0" in text
    assert 'state="running"} 1.0' in text
    trace = json.loads(http(url + "/api/timeline", token)[2])
    assert any(e["ph"] == "X" and e["name"] == "Trainer.step" for e in trace)
    touch(gate)
    assert shoal.get(running, timeout=60)


@pytest.mark.timeout(60)
def test_login_sets_a_cookie_and_a_wrong_token_is_refused(dashboard_cluster):
    url, token = dashboard_cluster
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(url + "/", timeout=30) as r:       # redirected to the login page
        assert r.url.endswith("/login") and "Cluster token" in r.read().decode()
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(url + "/login", data=b"token=not-it", timeout=30)
    assert info.value.code == 403 and "not the cluster token" in info.value.read().decode()
    assert not list(jar)
    with opener.open(url + "/login", data=f"token={token}".encode(), timeout=30) as r:
        assert r.url.rstrip("/") == url and "shoal dashboard" in r.read().decode()
    (cookie,) = list(jar)
    assert cookie.name == "shoal_session" and token not in cookie.value
    with opener.open(url + "/api/nodes", timeout=30) as r:
        assert json.loads(r.read())[0]["state"] == "ALIVE"


@pytest.mark.timeout(60)
def test_shoal_stop_ends_the_dashboard(cluster_env):
    out = launch.start_head("127.0.0.1", 0, num_cpus=1, dashboard_port=0)
    pid = out["dashboard_pid"]
    import psutil
    assert psutil.pid_exists(pid)
    stopped = launch.stop()
    assert any(s.startswith("dashboard") for s in stopped)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
             timeout=20, what="the dashboard to exit")
    assert not os.path.exists(os.path.join(StateDir().path, "dashboard.json"))


# ------------------------------------------------------------------ browser
@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def shot(driver, name):
    where = os.environ.get("SHOAL_SCREENSHOTS")
    if where:
        os.makedirs(where, exist_ok=True)
        driver.save_screenshot(os.path.join(where, f"dashboard-{name}.png"))


@pytest.mark.timeout(180)
def test_the_pages_in_a_browser(dashboard_cluster, browser, tmp_path):
    """Log in once; every page loads with no console error; the overview
    shows the node, the tasks page the running task and the failed task's
    traceback, the actors page the actor, the logs page its output, the
    doctor page a finding; without the token nothing but the login page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    url, token = dashboard_cluster
    gate, running, trainer = run_workload(tmp_path)
    stuck = parse_record.options(num_cpus=8).remote("{}")      # no node has 8 CPUs
    big = shoal.put(np.zeros(8_000_000, np.uint8))
    gang = placement_group([{"CPU": 0.1}, {"CPU": 0.1}], strategy="STRICT_PACK", name="gang")
    shoal.get(gang.ready(), timeout=60)

    def page_text() -> str:
        return browser.execute_script("return document.body ? document.body.innerText : ''")

    def text_appears(text, timeout=30):
        WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda d: text in page_text())

    def page_shown(heading, timeout=30):
        """Wait until the page drawn is the one headed ``heading`` (a hash
        change redraws in place: the last page's text is there until then)."""
        script = "const h = document.querySelector('section h2'); return h ? h.innerText : ''"
        WebDriverWait(browser, timeout, poll_frequency=0.2).until(
            lambda d: d.execute_script(script).startswith(heading))

    browser.get(url + "/#tasks")
    assert urlparse(browser.current_url).path == "/login"
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "button").click()
    text_appears("That is not the cluster token")
    assert [e["message"] for e in console_errors(browser)] == [    # (reading empties the log)
        f"{url}/login - Failed to load resource: the server responded with a status of 403 "
        f"(Forbidden)"]
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "button").click()
    text_appears("Nodes (1 alive)")
    node_id = shoal.get_runtime_context().get_node_id()
    text_appears(node_id[:12])
    assert "CPU" in page_text() and "GiB / " in page_text()       # the machine's memory
    shot(browser, "overview")

    browser.get(url + "/#tasks")
    page_shown("By function")
    text_appears("held_step")
    body = page_text()
    assert "RUNNING" in body and "BadRecord: not a JSON record" in body
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("FAILED")
    # (wait for the redraw with the filter: before it, the table also has the
    # pending parse_record, which has no traceback)
    WebDriverWait(browser, 30, poll_frequency=0.2).until(lambda d: d.execute_script("""
        const rows = [...document.querySelectorAll('#task-table tr.clickable')];
        return rows.length > 0 && rows.every(r => r.innerText.includes('FAILED'))
            && rows.some(r => r.innerText.includes('parse_record'))"""))
    # the page redraws every 2 s: click by script, which finds the row afresh
    browser.execute_script("""
        for (const tr of document.querySelectorAll('#task-table tr.clickable'))
            if (tr.innerText.includes('parse_record')) { tr.click(); break; }""")
    text_appears("Traceback (most recent call last)")
    body = page_text()
    assert "in parse_record" in body and "BadRecord: not a JSON record: 'garbage'" in body
    shot(browser, "tasks")
    Select(browser.find_element(By.ID, "state-filter")).select_by_value("")

    browser.get(url + "/#actors")
    page_shown("Actors")
    text_appears("Trainer")
    assert "ALIVE" in page_text()
    browser.execute_script("document.querySelector('a[data-actor]').click()")
    text_appears("trainer step 2")
    shot(browser, "logs")

    browser.get(url + "/#doctor")
    page_shown("Why is it stuck")
    text_appears("can never be scheduled")
    shot(browser, "doctor")
    # objects and memory: the driver's 8 MB put, largest first, with its owner
    browser.get(url + "/#objects")
    page_shown("Memory")
    text_appears(big.hex())
    row = browser.execute_script(f"""
        for (const tr of document.querySelectorAll('tr'))
            if (tr.innerText.includes('{big.hex()}')) return tr.innerText;""")
    assert "8000" in row and "SHARED_MEMORY" in row and f"driver pid {os.getpid()}" in row
    shot(browser, "objects")

    browser.get(url + "/#placement")
    page_shown("Placement groups")
    text_appears("gang")
    assert "CREATED" in page_text() and "STRICT_PACK" in page_text()

    browser.get(url + "/#timeline")
    page_shown("Timeline")
    WebDriverWait(browser, 30, poll_frequency=0.2).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#chart rect title')]"
        ".some(t => t.textContent.includes('Trainer.step'))"))
    shot(browser, "timeline")

    # the overview is live: a node's running-task count follows the work
    browser.get(url + "/#overview")
    text_appears("1 running")
    touch(gate)
    assert shoal.get(running, timeout=60)
    text_appears("0 running")

    # a driver's job links to its tasks: the tasks page filtered by that job
    job = shoal.get_runtime_context().get_job_id()
    browser.get(url + "/#jobs")
    page_shown("Jobs")
    text_appears(job)
    browser.execute_script(f"document.querySelector('a[data-job=\"{job}\"]').click()")
    page_shown("By function")
    WebDriverWait(browser, 30, poll_frequency=0.2).until(
        lambda d: Select(d.find_element(By.ID, "job-filter")).first_selected_option
        .get_attribute("value") == job and "held_step" in page_text())
    assert job in page_text()                       # the job column
    Select(browser.find_element(By.ID, "job-filter")).select_by_value("")
    assert console_errors(browser) == []

    browser.delete_all_cookies()                 # logged out: nothing but the login page
    browser.get(url + "/#overview")
    assert urlparse(browser.current_url).path == "/login"
    shoal.cancel(stuck)


# ---------------------------------------------------- a local cluster's
@pytest.mark.timeout(90)
def test_a_local_cluster_prints_its_dashboard_and_others_reach_it(cluster_env, capfd):
    """shoal.init() on one machine: the dashboard's one-time link logs in
    once; `shoal list` in another process sees this cluster's tasks;
    shutdown ends the dashboard and removes the socket, token and records."""
    import psutil
    info = shoal.init(num_cpus=2, include_dashboard=True, dashboard_port=0)
    try:
        url = info["dashboard_url"]
        err = capfd.readouterr().err
        link = next(w for w in err.split() if w.startswith(url + "/login?code="))
        token = shoal.core.get_core().doors.token
        assert token not in err
        shoal.get(plus_one_here.remote(1))

        def up():
            try:
                return http(url + "/api/nodes", token)[0] == 200
            except OSError:
                return False
        wait_for(up, timeout=30, interval=0.2, what="the local dashboard")
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(link, timeout=30) as r:       # logged in by the link
            assert urlparse(r.url).path == "/" and [c.name for c in jar] == ["shoal_session"]
        other = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(CookieJar()))
        with other.open(link, timeout=30) as r:        # ...once
            assert urlparse(r.url).path == "/login"
        out = subprocess.run([sys.executable, "-m", "shoal.cli", "list", "tasks"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "plus_one_here" in out.stdout and "FINISHED" in out.stdout
        dashboard = shoal.core.get_core().doors.proc.pid
        # the dashboard and the CLI are tools, not jobs: this driver is the one job
        (job,) = state.list_jobs()
        assert job["driver_pid"] == os.getpid() and job["status"] == "RUNNING"
        assert dashboard not in [w["pid"] for w in state.list_workers()]
    finally:
        shoal.shutdown()
    assert not psutil.pid_exists(dashboard) or psutil.Process(dashboard).status() == "zombie"
    nodes_dir = os.path.join(StateDir().path, "nodes")
    assert not os.path.exists(nodes_dir) or os.listdir(nodes_dir) == []


@pytest.mark.timeout(60)
def test_include_dashboard_false_starts_none(cluster_env, capfd):
    info = shoal.init(num_cpus=1, include_dashboard=False)
    try:
        assert info["dashboard_url"] is None
        assert shoal.core.get_core().doors.proc is None
        assert "dashboard" not in capfd.readouterr().err
    finally:
        shoal.shutdown()


@shoal.remote
def plus_one_here(x):
    return x + 1
