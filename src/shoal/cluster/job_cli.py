"""``shoal job submit|status|logs|stop|list``: the CLI side of cluster/jobs.py."""
from __future__ import annotations

import json
import shlex
import sys
import time

from .. import config
from ..runtime_env import check
from .auth import find_token
from .client import HeadClient
from .jobs import pack_working_dir
from .launch import head_address


def _client(args) -> HeadClient:
    return HeadClient(head_address(args.address), find_token(args.token_file), "cli")


def _follow(client: HeadClient, job_id: str, follow: bool = True) -> dict:
    offset = 0
    out = sys.stdout.buffer
    while True:
        data, offset, finished = client.call("job_logs", job_id, offset)
        if data:
            out.write(data)
            out.flush()
        elif finished or not follow:
            return client.call("job_status", job_id)
        else:
            time.sleep(0.1)       # poll the log while the job runs


def _runtime_env(args) -> tuple[str | None, dict]:
    """The job's working directory and the environment of its driver process
    from --working-dir and --runtime-env-json. The env_vars also travel in
    SHOAL_JOB_ENV_VARS, from which the driver's shoal.init() gives them to
    the job's tasks and actors (runtime_env.py)."""
    renv: dict = {}
    if getattr(args, "runtime_env_json", None):
        try:
            parsed = json.loads(args.runtime_env_json)
        except ValueError as e:
            raise ValueError(f"--runtime-env-json is not valid JSON: {e}") from None
        renv = check(parsed, "--runtime-env-json")
    if args.working_dir and "working_dir" in renv:
        raise ValueError("the working directory is given twice (--working-dir and "
                         "--runtime-env-json's working_dir): give it once")
    env_vars = renv.get("env_vars") or {}
    env = dict(env_vars)
    if env_vars:
        env["SHOAL_JOB_ENV_VARS"] = json.dumps(env_vars)
    return args.working_dir or renv.get("working_dir"), env


def run(args) -> int:
    cmd = args.job_command
    with _client(args) as client:
        if cmd == "submit":
            entry = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
            if not entry:
                raise ValueError("give the command after --, e.g. "
                                 "`shoal job submit -- python script.py`")
            working_dir, env = _runtime_env(args)
            archive = (pack_working_dir(working_dir, config.get("max_message_bytes") - 4096)
                       if working_dir else None)
            job_id = client.call("job_submit", shlex.join(entry), archive, env)
            print(f"job {job_id} submitted", file=sys.stderr)
            if args.no_wait:
                print(job_id)
                return 0
            status = _follow(client, job_id)
            print(f"job {job_id} {status['state'].lower()}"
                  + (f": {status['message']}" if status["message"] else ""), file=sys.stderr)
            return 0 if status["state"] == "SUCCEEDED" else 1
        if cmd == "status":
            s = client.call("job_status", args.job_id)
            print(f"{s['job_id']}: {s['state']}"
                  + (f" (exit code {s['exit_code']})" if s["exit_code"] is not None else "")
                  + (f": {s['message']}" if s["message"] else ""))
            return 0
        if cmd == "logs":
            _follow(client, args.job_id, args.follow)
            return 0
        if cmd == "stop":
            client.call("job_stop", args.job_id)
            print(f"stopping {args.job_id}")
            return 0
        if cmd == "list":
            for s in client.call("job_list"):
                print(f"{s['job_id']}  {s['state']:<9}  {s['entrypoint']}")
            return 0
    return 2
