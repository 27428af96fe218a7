#!/usr/bin/env python3
"""Every SQL statement the ClickHouse backend sends also runs on a current ClickHouse.

CI's cluster is Debian's ClickHouse 18.16 (the backend's own tests run there); users run 23 and
later. This runs each statement (`sextant clickhouse-sql` lists them, with sample values) on
chDB, ClickHouse 26.x embedded: the DDL and the reads for real, in order, on an empty
database. A `Distributed` table needs a cluster, which chDB has none of: its statement is
parsed (EXPLAIN AST) and a MergeTree copy of its local table stands in for it, so the reads
that use it run. A few rows are inserted first so the reads do some work. The id lookup reads
its ids as external data (a temporary table `sextant_ids` sent with the query over HTTP),
which chDB's Python API has no way to send: a Memory table of that name stands in for it.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

from chdb import session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATABASE = "sx"


def main():
    binary = os.environ.get("SEXTANT_BIN") or os.path.join(ROOT, "target", "debug", "sextant")
    out = subprocess.run([binary, "clickhouse-sql", "--database", DATABASE, "--cluster", "sextant"],
                         check=True, capture_output=True, text=True).stdout
    statements = [json.loads(line) for line in out.splitlines() if line.strip()]
    failures = 0
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        version = s.query("SELECT version()", "CSV").data().strip()
        seeded = False
        for statement in statements:
            first = " ".join(statement.split())[:90]
            try:
                distributed = re.match(r"CREATE TABLE IF NOT EXISTS (\S+) AS (\S+)\s+ENGINE = Distributed", statement)
                if distributed:
                    s.query("EXPLAIN AST " + statement)
                    s.query(f"CREATE TABLE IF NOT EXISTS {distributed.group(1)} AS {distributed.group(2)}")
                else:
                    if "sextant_ids" in statement:
                        s.query("CREATE TABLE IF NOT EXISTS sextant_ids (value String) ENGINE = Memory")
                        s.query("INSERT INTO sextant_ids VALUES ('e1'), ('it''s')")
                    if not seeded and re.search(r"FROM (events|event_ids|user_updates)\b", statement):
                        seed(s)
                        seeded = True
                    s.query(statement, "CSV")
                    if statement.startswith("CREATE DATABASE"):
                        s.query(f"USE {DATABASE}")
                print(f"ok   {first}")
            except Exception as e:  # noqa: BLE001 - report every failing statement
                failures += 1
                print(f"FAIL {first}\n     {str(e).splitlines()[0] if str(e) else e!r}")
    print(f"{len(statements) - failures} passed, {failures} failed (chDB, ClickHouse {version})")
    sys.exit(1 if failures else 0)


def seed(s):
    """A user, an aliased anonymous visitor, their events, ids and a trait update."""
    s.query("""INSERT INTO events VALUES
        ('p', 'u1', 1, '', 10, 1, 'signup', 'e1', ['plan'], [3], [0], ['pro']),
        ('p', 'a1', 0, 'a1', 5, 0, 'purchase', 'e0', ['amount'], [2], [9.5], ['']),
        ('p', 'u1', 1, '', 20, 2, 'purchase', 'e2', [], [], [], [])""")
    s.query("INSERT INTO aliases VALUES ('p', 'a1', 'u1', 3)")
    s.query("INSERT INTO event_ids VALUES ('p', 'e1', 1), ('p', 'e0', 0), ('p', 'e2', 2)")
    s.query("""INSERT INTO user_updates VALUES ('p', 'u1', 4, '{"user_id":"u1","set":[]}')""")
    rows = s.query("""SELECT owner, count() FROM (
            SELECT if(is_user = 1 OR alias_user = '', person, alias_user) AS owner FROM events
            ANY LEFT JOIN (SELECT anonymous_id AS person, toUInt8(0) AS is_user,
                                  argMax(user_id, seq) AS alias_user FROM aliases GROUP BY anonymous_id) AS latest
            USING (person, is_user)) GROUP BY owner""", "CSV").data().strip()
    assert rows == '"u1",3', f"the alias join credits a1's event to u1: {rows!r}"


if __name__ == "__main__":
    main()
