"""`orchestrator send` beyond the argument-size cap: `--data @FILE`, `--data -` (stdin) and
`--jsonl` for many events, checked before anything is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.harness import cli, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TWO_MB = 2 * 1024 * 1024


def big_payload(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = {"blob": "x" * TWO_MB}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    return path, data


def raised_limit(tmp_path: Path) -> Path:
    config = tmp_path / "orchestrator.toml"
    config.write_text(f"max_event_bytes = {3 * 1024 * 1024}\n")
    return config


def send(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=url)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "send", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=90,
        check=False,
    )


def test_send_data_from_file__two_megabytes_arrive(e2e_url, tmp_path):
    path, data = big_payload(tmp_path)
    config = raised_limit(tmp_path)

    result = cli(
        e2e_url, "send", "big/file", "--data", f"@{path}", "--id", "f-1", "--config", str(config)
    )

    assert result.stdout == "f-1\n"
    assert sql(e2e_url, "SELECT name, data FROM orchestrator.events") == [("big/file", data)]


def test_send_data_from_stdin__two_megabytes_arrive(e2e_url, tmp_path):
    path, data = big_payload(tmp_path)
    config = raised_limit(tmp_path)

    result = send(
        e2e_url,
        "big/stdin",
        "--data",
        "-",
        "--json",
        "--config",
        str(config),
        stdin=path.read_bytes(),
    )

    assert result.returncode == 0, result.stderr
    event_id = json.loads(result.stdout)["id"]
    assert sql(e2e_url, "SELECT id, name, data FROM orchestrator.events") == [
        (event_id, "big/stdin", data)
    ]


def test_send_data_from_file__over_the_limit__refused_with_the_limit(e2e_url, tmp_path):
    path, _ = big_payload(tmp_path)

    result = cli(e2e_url, "send", "big/file", "--data", f"@{path}", check=False)

    assert result.returncode == 1
    assert "over the 1048576-byte limit" in result.stderr
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_send_data_from_missing_file__says_so(e2e_url, tmp_path):
    result = cli(e2e_url, "send", "x", "--data", f"@{tmp_path / 'nope.json'}", check=False)

    assert result.returncode == 1
    assert (
        result.stderr == f"error: cannot read {tmp_path / 'nope.json'}: No such file or directory\n"
    )


def write_jsonl(path: Path, count: int) -> None:
    with path.open("w") as fh:
        for i in range(count):
            event = {"name": "bulk/item", "data": {"i": i}}
            if i % 2 == 0:
                event["id"] = f"item-{i}"
            fh.write(json.dumps(event) + "\n")


def test_send_jsonl__ten_thousand_events_arrive(e2e_url, tmp_path):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 10_000)

    result = cli(e2e_url, "send", "--jsonl", str(path))

    assert result.stdout == "sent 10000 events (10000 new, 0 duplicate ids)\n"
    assert result.stderr == ""  # no progress bar without a terminal
    rows = sql(e2e_url, "SELECT data->>'i', id FROM orchestrator.events ORDER BY seq")
    assert [int(i) for i, _ in rows] == list(range(10_000))  # all of them, in file order
    assert [event_id for i, event_id in rows if int(i) % 2 == 0] == [
        f"item-{i}" for i in range(0, 10_000, 2)
    ]


def test_send_jsonl_from_stdin__known_ids_are_counted_as_duplicates(e2e_url, tmp_path):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 1_200)
    cli(e2e_url, "send", "--jsonl", str(path))

    again = send(e2e_url, "--jsonl", "-", "--json", stdin=path.read_bytes())

    assert again.returncode == 0, again.stderr
    # the 600 lines with an id are known; the 600 without get new ids
    assert json.loads(again.stdout) == {"sent": 1200, "created": 600, "duplicates": 600}
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 1_800


def test_send_jsonl__bad_lines__named_by_number_and_nothing_sent(e2e_url, tmp_path):
    lines = [
        '{"name": "ok/1", "data": {"a": 1}}',
        "",
        "{not json",
        '{"name": "ok/2", "data": null}',
        '{"nmae": "ok/3"}',
        '{"name": "ok/4", "data": [1]}',
        '{"name": "ok/5"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = cli(e2e_url, "send", "--jsonl", str(path), check=False)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: 4 bad line(s), nothing was sent:",
        "  line 3: not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        "  line 4: event data must be a JSON object, got null",
        "  line 5: unknown key 'nmae'; a line takes name, data and id",
        "  line 6: event data must be a JSON object, got array",
    ]
    as_json = cli(e2e_url, "send", "--jsonl", str(path), "--json", check=False)
    assert json.loads(as_json.stdout)["error"]["code"] == "invalid_event"
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_send_jsonl__with_name_or_data__usage_error(e2e_url, tmp_path):
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 1)

    result = cli(e2e_url, "send", "x", "--jsonl", str(path), "--json", check=False)

    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "usage_error"
    assert "give no NAME, --data or --id with it" in error["message"]
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_send__records_the_traceparent_the_command_was_started_with(e2e_url, tmp_path):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"name": "traced/many", "id": "m-1"}\n')
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=e2e_url, TRACEPARENT=traceparent)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for args in (["traced/one", "--id", "o-1"], ["--jsonl", str(lines)]):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "send", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    rows = sql(e2e_url, "SELECT id, trace_context FROM orchestrator.events ORDER BY id")
    assert rows == [("m-1", {"traceparent": traceparent}), ("o-1", {"traceparent": traceparent})]
