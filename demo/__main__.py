"""A live demo of the service: it starts Redis (a redis-server when one is on PATH, else the embedded one)
and two instances sharing it and the database (SQLite in a temporary directory, or a schema of its own in
DATABASE_URL's PostgreSQL database, dropped at the end), runs scenes, and for each prints the commands a
person could type, what came back and the metric deltas.

    python -m demo                    every scene
    python -m demo --scene stampede   one scene
    python -m demo --list

Exit status 1 if any scene's outcome check fails. Everything it started is stopped, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from demo import scenes, scenes_ops
from demo.show import Outcome, say, title
from demo.stack import InstanceDidNotStart, Stack

SCENES = {
    "tiers": (scenes.tiers, "a read goes db -> redis -> lru"),
    "coherence": (scenes.coherence, "a write on A is seen on B within milliseconds"),
    "stampede": (scenes.stampede, f"{scenes.COLD_READS} cold reads sent together, one database load"),
    "penetration": (scenes.penetration, f"{scenes.NEVER_EXISTED:,} ids that never existed, no database read"),
    "redis-down": (scenes_ops.redis_down, "Redis killed and restarted under reads and writes"),
    "warming": (scenes_ops.warming, "warm every tier from the database, with progress"),
    "sql": (scenes_ops.sql, "a row written with plain SQL appears on both instances"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", action="append", choices=list(SCENES), help="run only this scene (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenes and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, what) in SCENES.items():
            print(f"{name:12} {what}")
        return 0
    chosen = args.scene or list(SCENES)
    # Ctrl-C and `kill <pid>` both end in the clean-up below, even where SIGINT was inherited as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    database_url = os.environ.get("DATABASE_URL") or None
    if database_url and not database_url.startswith(("postgres://", "postgresql://")):
        parser.error("DATABASE_URL must be a PostgreSQL URL (or unset: SQLite in a temporary directory)")
    stack = Stack(database_url)
    outcomes: dict[str, Outcome] = {}
    try:
        try:
            a, b = stack.start()
        except InstanceDidNotStart as exc:
            print(f"FAIL setup: {exc}", flush=True)
            return 1
        redis = f"redis-server at {stack.redis_url}" if stack.real_redis else f"embedded Redis at {stack.redis_url}"
        title("setup")
        say(f"{redis}; database {stack.database_url}")
        say(f"instance A: localhost:{a.port}, instance B: localhost:{b.port} (gunicorn app:app, 2 workers each)")
        for name in chosen:
            if any(server.proc is None or server.proc.poll() is not None for server in (a, b)):
                outcomes[name] = Outcome(False, "not run: instance A or B has exited")
                print(f"FAIL {name}: {outcomes[name].summary}", flush=True)
                continue
            run, what = SCENES[name]
            title(f"{name}: {what}")
            began = time.monotonic()
            try:
                outcomes[name] = run(stack, a, b)
            except Exception as exc:  # noqa: BLE001 - one scene failing must not hide the others' verdicts
                outcomes[name] = Outcome(False, f"{type(exc).__name__}: {exc}")
            verdict = "SKIP" if outcomes[name].skipped else "PASS" if outcomes[name].ok else "FAIL"
            print(f"{verdict} {name}: {outcomes[name].summary} ({time.monotonic() - began:.1f} s)", flush=True)
            if _signals_received:  # its KeyboardInterrupt was swallowed (see _interrupt): stop here all the same
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # A second Ctrl-C must not cut the clean-up short (every stop in it has its own deadline).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\ninterrupted: stopping everything the demo started", file=sys.stderr)
        return 130
    finally:
        stack.close()
    failed = [name for name, outcome in outcomes.items() if not outcome.ok]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} scenes passed in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


# Signals received. The handler raises KeyboardInterrupt wherever the main thread is, and Python swallows an
# exception raised while a __del__ runs ("Exception ignored in ...": seen in redis-py's ConnectionPool.__del__,
# after which the interrupted demo ran on and exited 0): main also looks here after each scene.
_signals_received: list[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _signals_received.append(signum)
    raise KeyboardInterrupt


if __name__ == "__main__":
    status = main()
    if status == 130:
        # Interrupted, and everything it started is stopped: leave with Ctrl-C's status now. Left to finish
        # normally, the interpreter sometimes killed itself with SIGINT instead (status -2, no traceback; 5 of
        # about 100 interrupted runs, strace showing Python's own exit-by-SIGINT after main returned 130).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)
