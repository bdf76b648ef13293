"""``fastemb submit`` and ``fastemb jobs``: run fastemb job specs on a Ray cluster through the Ray Jobs API.

    fastemb submit jobs/contrastive.yaml train.lr=3e-5 --address http://HEAD:8265 --follow
    fastemb jobs list | status ID | logs ID [--follow] | stop ID [--wait]

The job runs ``python -m fastemb.cli <job> <spec> <overrides> ray.address=auto`` in the working_dir
that ``runtime_env.yaml`` uploads, so the same spec runs unchanged locally (``fastemb train spec``) and
on a cluster. Every path field the schema declares is handled (fastemb/submit_paths.py): relative outputs
(``storage_path``, ``output``, ...) are pinned to absolute paths, which on a real cluster must name a
filesystem every node mounts at the same path (NFS/EFS/Filestore), or use an object-store URI
(``s3://``); local inputs are uploaded with the working_dir, pinned on the shared ``storage_path``, or refused with
the fix. ``--dry-run`` prints the decision for each path field and what each compute stage asks the cluster for
(``fastemb.accelerator.stage_requests``: CPUs and GPUs per training worker, encoder actor and Serve replica, and the
accelerator, backend and precision the spec picks).

The accelerator is the spec's choice (``train.use_gpu``), made on the cluster by the job itself: the submitting
machine's ``DS_ACCELERATOR`` is not sent (``--env DS_ACCELERATOR=...`` forces one).

Auth: the token comes from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's
own order) and is sent as an HTTP header only; it is never printed, put in the runtime_env or in the
job metadata. Environment variables whose names look like secrets are refused in the runtime_env,
since every env var there is stored in the job's info for anyone with dashboard access to read.

Exit status of ``submit --follow`` / ``jobs logs --follow`` / ``jobs stop --wait``: 0 SUCCEEDED,
1 FAILED, 3 STOPPED; 2 for usage or connection errors; 130 when following is interrupted (the job
keeps running).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from fastemb.accelerator import stage_requests
from fastemb.spec import apply_overrides, command_words, load_spec
from fastemb.submit_paths import PathDecision, UploadRules, decide_paths, refusal_message

logger = logging.getLogger(__name__)
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
TERMINAL = set(EXIT_CODES)
# Env var names that must not travel in a runtime_env (it is stored in the job info, readable in the dashboard).
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY|ACCESS_KEY|API_KEY)(_|$)",
                         re.I)
# worker_env() entries that describe the submitting machine (a path, its accelerator): the cluster decides its own.
MACHINE_LOCAL_ENV = {"TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR"}


class SubmitError(RuntimeError):
    """Submitting or talking to the cluster failed; the message says what to do."""


# --------------------------------------------------------------------------------------------- auth


def auth_token() -> str | None:
    """The cluster token by Ray's lookup order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    return path.read_text().strip() if path.is_file() else None


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 "
                          "(or set RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise SubmitError(f"--address {address!r}: expected the dashboard / Jobs API URL, e.g. http://HEAD:8265")
    return address.rstrip("/")


def _scrub(text: str) -> str:
    token = auth_token()
    return text.replace(token, "<token>") if token else text


def _api_errors() -> tuple[type[BaseException], ...]:
    """What the Jobs API client raises for refused or failed requests (auth, upload size, unknown id)."""
    from ray.exceptions import AuthenticationError

    return (AuthenticationError, ConnectionError, RuntimeError, ValueError)


def job_client(address: str | None):
    """A JobSubmissionClient for the cluster, sending the token as a Bearer header when one is found."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except _api_errors() as err:
        hint = "" if token else " (no auth token found: set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
        raise SubmitError(f"Ray Jobs API at {url}{hint}: {_scrub(str(err)).strip()}") from None


# ---------------------------------------------------------------------------------- runtime env


def load_runtime_env(path: str | os.PathLike) -> dict[str, Any]:
    """Read runtime_env.yaml; a local ``working_dir`` is resolved against the file's folder."""
    p = Path(path)
    if not p.is_file():
        raise SubmitError(f"runtime env {str(p)!r} not found (pass --runtime-env PATH)")
    env = yaml.safe_load(p.read_text()) or {}
    if not isinstance(env, dict):
        raise SubmitError(f"runtime env {p}: expected a mapping")
    wd = env.get("working_dir")
    if wd and "://" not in str(wd):
        env["working_dir"] = str((p.resolve().parent / wd).resolve())
    return env


def check_no_secrets(env_vars: dict[str, str], extra: list[str] = ()) -> None:
    """Refuse secret-looking env vars (and the cluster token anywhere) in what is stored with the job."""
    bad = sorted(k for k in env_vars if SECRET_NAME.search(k))
    if bad:
        raise SubmitError(f"runtime_env env_vars {', '.join(bad)} look like secrets: the runtime_env is stored "
                          "in the job info that anyone with dashboard access can read. Provide secrets on the "
                          "cluster side instead (a Kubernetes Secret, an instance role, a mounted file).")
    token = auth_token()
    if token and any(token in str(v) for v in [*env_vars.values(), *extra]):
        raise SubmitError("the cluster auth token appears in the job's env vars or arguments; refusing to submit it")


def build_runtime_env(path: str | os.PathLike, spec, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """runtime_env.yaml plus fastemb's worker env vars (``worker_env``) and logging setup hook, the yaml and --env
    winning."""
    from fastemb import logs
    from fastemb.ray_env import worker_env

    env = load_runtime_env(path)
    threads = getattr(getattr(spec, "train", None), "cpus_per_worker", 1)
    env_vars = {k: v for k, v in worker_env(threads).items() if k not in MACHINE_LOCAL_ENV}
    # fastemb's driver calls init_ray(), whose ray.init(runtime_env={"env_vars": worker_env()}) repeats
    # these keys; Ray refuses such a merge with the job's runtime_env unless told to combine them.
    env_vars["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    env_vars.update({str(k): str(v) for k, v in (env.get("env_vars") or {}).items()})
    env_vars.update(extra_env or {})
    env["env_vars"] = env_vars
    env.setdefault("worker_process_setup_hook", logs.SETUP_HOOK)  # fastemb's logging in every worker of the job
    return env


# ---------------------------------------------------------------------------------- submission


def portable_paths(spec_path: Path, overrides: list[str], spec, runtime_env: dict, runtime_env_name: str,
                   shared: list[str] = ()) -> tuple[list[str], list[PathDecision]]:
    """The overrides that make the spec's path fields valid on the cluster, and the decision for each path field;
    raises SubmitError naming every input that would not reach the cluster."""
    raw = apply_overrides(yaml.safe_load(spec_path.read_text()) or {}, overrides)
    uploads = UploadRules(runtime_env["working_dir"], runtime_env.get("excludes") or [], runtime_env_name)
    storage_path = getattr(spec, "storage_path", None)
    decisions = decide_paths(type(spec), raw, uploads, storage_path, shared)
    refused = [d for d in decisions if d.action == "refused"]
    if refused:
        raise SubmitError(refusal_message(refused, storage_path, runtime_env_name))
    return [f"{d.field}={d.result}" for d in decisions if d.result != d.value], decisions


def build_submission(spec_path: str, overrides: list[str], runtime_env_path: str,
                     extra_env: dict[str, str] | None = None, submission_id: str | None = None,
                     shared: list[str] = ()) -> dict[str, Any]:
    """Everything ``submit_job`` needs: entrypoint, runtime_env, metadata, submission id, plus the decision for each
    path field (``paths``) and notes on the paths that changed. ``shared``: folders every node mounts at the same
    path (local inputs under them are pinned like those under ``storage_path``)."""
    spec = load_spec(spec_path, overrides)  # validate here: a bad spec fails before anything is uploaded
    runtime_env = build_runtime_env(runtime_env_path, spec, extra_env)
    workdir = runtime_env.get("working_dir")
    sp = Path(spec_path).resolve()
    if not workdir or "://" in workdir:
        raise SubmitError("runtime_env.yaml needs a local working_dir (the spec and fastemb's code are uploaded "
                          "from it)")
    try:
        rel = sp.relative_to(workdir)
    except ValueError:
        raise SubmitError(f"job spec {spec_path} is outside the working_dir {workdir} that is uploaded; "
                          "move it inside") from None
    extra, decisions = portable_paths(sp, overrides, spec, runtime_env, Path(runtime_env_path).name,
                                      [os.path.abspath(os.path.expanduser(d)) for d in shared])
    notes = [f"{d.field} {d.value!r} → {d.result} ({d.why})" for d in decisions if d.result != d.value]
    args = [*overrides, *extra]
    if "ray" in type(spec).model_fields:
        args.append("ray.address=auto")  # join the cluster the job runs on
    check_no_secrets(runtime_env["env_vars"], args)
    entrypoint = shlex.join(["python", "-m", "fastemb.cli", *command_words(spec.job), rel.as_posix(), *args])
    name = getattr(spec, "name", spec.job)
    sid = submission_id or f"fastemb-{spec.job}-{name}-{uuid.uuid4().hex[:8]}"
    metadata = {"fastemb_job": spec.job, "fastemb_spec": rel.as_posix(), "fastemb_name": name}
    return {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata,
            "submission_id": sid, "notes": notes, "paths": [d.as_dict() for d in decisions],
            "resources": stage_requests(spec, runtime_env["env_vars"])}


def format_paths(paths: list[dict]) -> str:
    """The ``--dry-run`` table: one line per path field with its decision."""
    return "\n".join(f"  {p['field']} = {p['value']!r}: {p['action']}"
                     + (f" → {p['result']}" if p["result"] != p["value"] else "") + f" ({p['why']})"
                     for p in paths)


def format_resources(resources: dict[str, dict]) -> str:
    """The ``--dry-run`` lines of what each compute stage asks the cluster for."""
    def ask(per: dict) -> str:
        return " + ".join(f"{v:g} {k}" for k, v in per.items())

    lines = []
    for name, r in resources.items():
        if "workers" in r:
            lines.append(f"  {name}: {r['workers']} workers x ({ask(r['per_worker'])}), DeepSpeed on {r['accelerator']} "
                         f"({r['backend']}), {r['precision']}, ZeRO-{r['zero_stage']}")
        elif "actors" in r:
            lines.append(f"  {name}: {r['actors']} encoder actors x ({ask(r['per_actor'])}), {r['device']}, "
                         f"{r['precision']}")
        else:
            lines.append(f"  {name}: each Serve replica ({ask(r['per_replica'])}), {r['device']}, {r['precision']}")
    return "\n".join(lines)


async def _tail(client, sid: str) -> None:
    async for chunk in client.tail_job_logs(sid):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def wait_status(client, sid: str, timeout: float | None = None) -> str:
    deadline = None if timeout is None else time.time() + timeout
    while True:
        status = str(client.get_job_status(sid).value)
        if status in TERMINAL or (deadline and time.time() > deadline):
            return status
        time.sleep(1)


def follow(client, sid: str) -> int:
    """Stream the job's logs until it ends; returns the exit code for its final status."""
    try:
        asyncio.run(_tail(client, sid))
        status = wait_status(client, sid)
    except KeyboardInterrupt:
        logger.info(f"stopped following; job {sid} keeps running "
                    f"(fastemb jobs logs {sid} --follow | fastemb jobs stop {sid})")
        return 130
    info = client.get_job_info(sid)
    msg = f": {info.message}" if status != "SUCCEEDED" and info.message else ""
    logger.log(logging.INFO if status == "SUCCEEDED" else logging.ERROR, f"job {sid} {status}{_scrub(msg)}")
    return EXIT_CODES.get(status, 1)


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SubmitError(f"--env {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def cmd_submit(args) -> int:
    try:
        sub = build_submission(args.spec, list(args.overrides), args.runtime_env, _env_pairs(args.env),
                               args.submission_id, args.shared or [])
        if args.dry_run:
            logger.info("path fields:\n" + (format_paths(sub["paths"]) or "  (none set)"))
            logger.info("compute stages ask the cluster for:\n" + (format_resources(sub["resources"]) or "  (none)"))
            print(json.dumps({k: sub[k] for k in ("submission_id", "entrypoint", "runtime_env", "metadata", "paths",
                                                  "resources")}, indent=2))
            return 0
        for note in sub["notes"]:
            logger.info(f"note: {note}")
        client = job_client(args.address)
        kwargs = {}
        if args.entrypoint_num_cpus is not None:
            kwargs["entrypoint_num_cpus"] = args.entrypoint_num_cpus
        sid = client.submit_job(entrypoint=sub["entrypoint"], runtime_env=sub["runtime_env"],
                                metadata=sub["metadata"], submission_id=sub["submission_id"], **kwargs)
    except SubmitError as err:
        logger.error(err)
        return 2
    except _api_errors() as err:  # the Jobs API refused (auth, upload size, duplicate id)
        logger.error(_scrub(str(err)).strip())
        return 2
    print(sid, flush=True)
    logger.info(sub["entrypoint"])
    if not args.follow:
        logger.info(f"follow with `fastemb jobs logs {sid} --follow`")
        return 0
    return follow(client, sid)


def cmd_jobs(args) -> int:
    try:
        client = job_client(args.address)
        if args.action == "list":
            jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
            print(f"{'SUBMISSION ID':44} {'STATUS':10} {'STARTED':19}  ENTRYPOINT")
            for j in jobs:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) \
                    if j.start_time else "-"
                ep = j.entrypoint if len(j.entrypoint) <= 80 else j.entrypoint[:77] + "..."
                print(f"{j.submission_id or j.job_id or '-':44} {str(j.status.value):10} {started:19}  {ep}")
            return 0
        if not args.id:
            raise SubmitError(f"`fastemb jobs {args.action}` needs a submission id")
        if args.action == "status":
            info = client.get_job_info(args.id)
            status = str(info.status.value)
            print(status + (f": {_scrub(info.message)}" if info.message else ""))
            return EXIT_CODES.get(status, 0)
        if args.action == "logs":
            if args.follow:
                return follow(client, args.id)
            sys.stdout.write(client.get_job_logs(args.id))
            return 0
        if args.action == "stop":
            stopped = client.stop_job(args.id)
            logger.info(f"stop {'requested' if stopped else 'not needed (job already ended)'} for {args.id}")
            if args.wait:
                status = wait_status(client, args.id)
                print(status)
                return EXIT_CODES.get(status, 1)
            return 0
    except SubmitError as err:
        logger.error(err)
        return 2
    except _api_errors() as err:
        logger.error(_scrub(str(err)).strip())
        return 2
    return 2


def add_submit_commands(sub) -> None:
    """Register ``submit`` and ``jobs`` on the CLI's sub-parsers."""
    p = sub.add_parser("submit", help="run a job spec on a Ray cluster (Ray Jobs API)",
                       description="Submit a fastemb job spec to a Ray cluster; prints the submission id.")
    p.add_argument("spec", help="job spec YAML inside the working_dir (e.g. jobs/contrastive.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-5")
    p.add_argument("--address", help="Jobs API URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                                     "$RAY_ADDRESS)")
    p.add_argument("--runtime-env", default="runtime_env.yaml", help="runtime env YAML (default: ./runtime_env.yaml)")
    p.add_argument("--follow", action="store_true", help="stream the logs and exit with the job's status")
    p.add_argument("--submission-id", help="default: fastemb-<job>-<name>-<random>")
    p.add_argument("--env", action="append", metavar="KEY=VALUE", help="extra env var for the job (not secrets)")
    p.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver (default 0)")
    p.add_argument("--shared", action="append", metavar="DIR", help="a folder every node mounts at the same path: "
                   "local inputs under it are passed by absolute path (storage_path is one already)")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted and the decision for each "
                   "path field (pinned, uploaded, kept, refused); submit nothing")
    p.set_defaults(fn=cmd_submit)

    j = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    j.add_argument("action", choices=["list", "status", "logs", "stop"])
    j.add_argument("id", nargs="?", help="submission id (status, logs, stop)")
    j.add_argument("--address", help="Jobs API URL (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS)")
    j.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    j.add_argument("--wait", action="store_true", help="stop: wait until the job has stopped")
    j.set_defaults(fn=cmd_jobs)
