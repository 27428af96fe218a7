"""Shared helpers for the reference checks: build stubs from ../proto, run a server, load data."""
import glob
import importlib
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    """Generates the Python gRPC stubs from the repo's protos into a temp dir and imports them."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="sextant-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    proto_root = os.path.join(ROOT, "proto")
    files = sorted(glob.glob(os.path.join(proto_root, "sextant", "v1", "*.proto")))
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    names = ["project", "ingest", "metric", "common", "analysis", "cohort"]
    return {n: importlib.import_module(f"sextant.v1.{n}_pb2") for n in names} | {
        f"{n}_grpc": importlib.import_module(f"sextant.v1.{n}_pb2_grpc") for n in ["project", "metric", "analysis", "cohort"]
    }


def binary():
    path = os.environ.get("SEXTANT_BIN") or os.path.join(ROOT, "target", "debug", "sextant")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--quiet"], cwd=ROOT, check=True)
    return path


def sextant(*args):
    """Runs `sextant ARGS...` (gen, load); on failure raises with what it printed to stderr, so the
    check's last lines say why (without a backtrace pushing the message out of a CI log's tail)."""
    env = dict(os.environ, RUST_BACKTRACE="0")
    done = subprocess.run([binary(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"sextant {args[0]} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")


def storage_flags(data_dir):
    """With SEXTANT_TEST_STORAGE=clickhouse, the server runs on the cluster of
    SEXTANT_CLICKHOUSE_URL, in a database of its own (how scripts/test.sh checks both backends)."""
    if os.environ.get("SEXTANT_TEST_STORAGE") != "clickhouse":
        return []
    database = "ref_" + os.path.basename(data_dir).replace("-", "_")
    return ["--storage", "clickhouse", "--clickhouse-url", os.environ["SEXTANT_CLICKHOUSE_URL"],
            "--clickhouse-database", database]


class Server:
    """A sextant server on a free port with a fresh data dir; stopped on exit."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sextant-ref-")
        # The server's log, printed when a check fails (its stderr is not the check's output).
        self.log = open(os.path.join(self.dir, "server.log"), "w+")
        self.proc = subprocess.Popen(
            [binary(), "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir", os.path.join(self.dir, "db")]
            + storage_flags(self.dir),
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=dict(os.environ, NO_COLOR="1"),
        )
        line = self.proc.stdout.readline()
        prefix = "sextant listening on "
        if not line.startswith(prefix):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            sys.exit(f"server did not start: {line!r}; its log:\n{self.log.read()[-4000:]}")
        self.addr = line[len(prefix):].strip()

    def generate_and_load(self, users, seed, project):
        data = os.path.join(self.dir, "data")
        sextant("gen", "--users", users, "--seed", seed, "--out", data)
        sextant("load", "--addr", self.addr, "--project", project,
                "--users", os.path.join(data, "users.jsonl"), "--events", os.path.join(data, "events.jsonl"))
        return data

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if kind is not None and not (kind is SystemExit and value.code in (0, None)):
            self.log.seek(0)
            tail = self.log.readlines()[-40:]
            print(f"--- the server's log, last {len(tail)} lines ({self.proc.returncode=}):", file=sys.stderr)
            sys.stderr.writelines(tail)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def duckdb_of(data):
    """DuckDB with the generated files as tables, in UTC: `events` (deduplicated by event_id; name,
    user_id, ts, revenue, mrr, experiment, variant) and `users` (user_id, channel)."""
    import duckdb

    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute(f"""
        CREATE TABLE events AS
        SELECT DISTINCT ON (event_id) event_id, name, user_id, CAST(timestamp AS TIMESTAMPTZ) AS ts,
               TRY_CAST(json_extract(properties, '$.revenue') AS DOUBLE) AS revenue,
               TRY_CAST(json_extract(properties, '$.mrr') AS DOUBLE) AS mrr,
               properties->>'experiment' AS experiment, properties->>'variant' AS variant
        FROM read_json_auto('{os.path.join(data, 'events.jsonl')}', format='newline_delimited',
                            columns={{'event_id': 'VARCHAR', 'name': 'VARCHAR', 'user_id': 'VARCHAR',
                                      'timestamp': 'VARCHAR', 'properties': 'JSON'}})
        ORDER BY event_id""")
    db.execute(f"""
        CREATE TABLE users AS SELECT user_id, traits->>'channel' AS channel
        FROM read_json_auto('{os.path.join(data, 'users.jsonl')}', format='newline_delimited',
                            columns={{'user_id': 'VARCHAR', 'traits': 'JSON'}})""")
    return db


class Checks:
    """Counts comparisons and prints the closing line CI reads."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def equal(self, what, got, want):
        if got == want:
            self.passed += 1
            print(f"ok   {what}")
            return
        self.failed += 1
        print(f"FAIL {what}")
        keys = sorted(set(got) | set(want)) if isinstance(got, dict) else range(max(len(got), len(want)))
        shown = 0
        for k in keys:
            g = got.get(k) if isinstance(got, dict) else (got[k] if k < len(got) else None)
            w = want.get(k) if isinstance(want, dict) else (want[k] if k < len(want) else None)
            if g != w and shown < 10:
                print(f"     {k}: sextant {g!r} != duckdb {w!r}")
                shown += 1

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)
