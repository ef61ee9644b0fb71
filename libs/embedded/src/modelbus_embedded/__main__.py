"""``python -m modelbus_embedded up|down|status|demo`` — the embedded stack's command line.

``up`` starts the protocol servers and the six services under the data folder (default
``.data``), runs the demo scenario (the whole closed loop, printed as a timeline) and leaves
everything running. ``down`` stops what ``up`` started. Authentication is on: ``up`` prints
where the stack's API keys are (``<data>/keys/api_keys.json``) and how to call the APIs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import httpx

from .simulator import ScenarioConfig, Upstream
from .stack import (
    API_KEY_ROLES,
    SERVICES,
    Stack,
    api_keys_path,
    build_stack,
    port_in_use,
    stop_recorded,
)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get("MODELBUS_DATA_DIR", ".data")).resolve()


MEMORY_BROKER_NOTE = """
note: the embedded Kafka broker ({bootstrap}) keeps its topics in memory: events in flight
  are gone when it stops (`make down`, a crash). The state that matters does not depend on it:
  models, versions, aliases, runs, audit, incidents and checkpoints are in MongoDB and the
  object store under {data}, and every service rebuilds from them. For a durable broker run
  the compose stack (infra/compose.yaml)."""


def _pick_model_name(stack: Stack) -> str:
    """Reuse nothing: a demo run after a restart trains a fresh model beside the restored ones."""
    viewer = stack.auth_headers("viewer")
    listed = httpx.get(f"{stack.url('registry')}/models", headers=viewer, timeout=10)
    listed.raise_for_status()
    models = listed.json()
    names = {m["name"] for m in models}
    for m in models:
        champion = m.get("aliases", {}).get("champion")
        ready = httpx.get(
            f"{stack.url('scorer')}/v2/models/{m['name']}/ready", headers=viewer, timeout=10
        )
        state = "served again" if ready.status_code == 200 else f"NOT served ({ready.status_code})"
        print(f"restored   model {m['name']}: champion v{champion} {state} after the restart")
    name, n = "churn", 1
    while name in names:
        n += 1
        name = f"churn-{n}"
    return name


def cmd_up(args: argparse.Namespace) -> int:
    data = _data_dir(args)
    stop_recorded(data)
    busy = [
        f"{s}:{p}"
        for s, p in {s: 8001 + i for i, s in enumerate(SERVICES)}.items()
        if port_in_use(p)
    ]
    if busy:
        print(f"ports in use: {', '.join(busy)} - stop what uses them (or `make down`)")
        return 1
    print(f"starting the embedded stack under {data} ...")
    # the defaults, nothing tuned
    stack = build_stack(data, object_store=args.store, auth=not args.no_auth)
    try:
        stack.start()
    except Exception as exc:
        print(f"start-up failed: {exc}")
        stack.stop()
        return 1
    stack.save_state()
    print(f"all {len(SERVICES)} services ready:")
    for service in SERVICES:
        print(f"  {service:9s} {stack.url(service)}  (API docs: {stack.url(service)}/docs)")
    print(MEMORY_BROKER_NOTE.format(bootstrap=stack.kafka_bootstrap, data=data))
    auth = print_credentials(stack)
    if args.no_demo:
        return 0
    model = _pick_model_name(stack)
    print(f"\nrunning the demo loop for model {model!r} (Ctrl-C stops the demo, not the stack)\n")
    upstream = Upstream(
        stack.kafka_bootstrap,
        stack.url("trainer"),
        stack.url("scorer"),
        ScenarioConfig(model_name=model, monitor_url=stack.url("monitor")),
        api_key=stack.api_key("upstream"),
    )
    result = asyncio.run(upstream.run())
    loop_s = result.seconds("drift_onset", "new_champion_serving")
    detect_s = result.seconds("drift_onset", "drift_detected")
    print()
    if result.completed and loop_s is not None:
        print(
            f"closed loop complete: drift onset -> drift detected {detect_s:.1f}s -> "
            f"new champion serving {loop_s:.1f}s"
        )
    else:
        print("the loop did not complete; see the service logs in", data / "logs")
    recovered = [m for m in result.marks if m.startswith("incident_")]
    if recovered:
        state = recovered[0].removeprefix("incident_")
        print(
            f"incident {state} {result.marks[recovered[0]] - result.marks['drift_onset']:.1f}s "
            "after the drift onset"
        )
    print(f"{result.requests_sent} scoring requests, {result.labels_sent} labels published")
    print("\nthe stack keeps running; `make down` stops it. Try:")
    print(f"  curl{auth} {stack.url('registry')}/models/{model}/audit")
    print(f"  curl{auth} {stack.url('scorer')}/v2/models/{model}")
    print(f"  curl{auth} {stack.url('monitor')}/models/{model}/status")
    return 0 if result.completed else 2


def print_credentials(stack: Stack) -> str:
    """Where the stack's API keys are and how to use them; the curl option that presents the
    key the printed example exports ("" with auth off)."""
    if not stack.auth:
        print("\nauthentication is off: the APIs answer anyone")
        return ""
    path = api_keys_path(stack.data_dir)
    roles = ", ".join(f"{name} ({role})" for name, role in API_KEY_ROLES.items())
    print(f"\nauthentication is on. The stack's API keys (kept across restarts): {path}")
    print(f"  {roles}")
    print("  the admin's key, then a call with it (health and /metrics need none):")
    print(
        "  export MODELBUS_KEY=$(python3 -c 'import json, sys; "
        f'print(json.load(open(sys.argv[1]))["admin"]["key"])\' {shlex.quote(str(path))})'
    )
    print(f'  curl -H "Authorization: Bearer $MODELBUS_KEY" {stack.url("registry")}/models')
    return ' -H "Authorization: Bearer $MODELBUS_KEY"'


def cmd_down(args: argparse.Namespace) -> int:
    stopped = stop_recorded(_data_dir(args))
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path = _data_dir(args) / "run" / "stack.json"
    if not path.exists():
        print("not running")
        return 1
    state = json.loads(path.read_text())
    for name, url in state["urls"].items():
        try:
            code = httpx.get(f"{url}/health/ready", timeout=2).status_code
        except httpx.HTTPError:
            code = "down"
        print(f"{name:9s} {url} ready={code}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelbus_embedded", description=__doc__)
    parser.add_argument("--data-dir", help="state folder (default .data or $MODELBUS_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and run the demo loop")
    up.add_argument("--no-demo", action="store_true", help="only start the stack")
    up.add_argument(
        "--store",
        choices=("local", "s3"),
        default="local",
        help="artifact store: a local folder (persistent) or an S3 server (moto)",
    )
    up.add_argument(
        "--no-auth", action="store_true", help="authentication off: the APIs answer anyone"
    )
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show the services' readiness").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
