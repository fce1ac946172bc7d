"""`iris send --file` as a producer's export reaches it: ids written as JSON numbers, Unicode line
separators inside values, a BOM, CR LF, and files that are not UTF-8. What the stream holds is
compared field by field with what the file says."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as sync_redis
import yaml

from tests.test_cli import iris


@pytest.fixture
def send(tmp_path: Path, redis_server, stream_key):
    """``send(content)`` writes an events file and runs ``iris send --file`` on it; returns
    (exit code, stderr, the fields the stream then holds, the file's path)."""
    config = tmp_path / "iris.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_server.url}, "stream": {"key": stream_key},
        "destinations": [{"id": "423", "url": "https://p.example/x", "user_dpid": "12345",
                          "client_id": "2"}]}))
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)

    def run(content: bytes) -> tuple[int, str, list[dict[str, str]], Path]:
        events = tmp_path / "events.jsonl"
        events.write_bytes(content)
        result = iris("send", "-c", str(config), "--file", str(events))
        stored = [fields for _, fields in client.xrange(stream_key)]
        client.delete(stream_key)
        return result.returncode, result.stderr, stored, events

    yield run
    client.close()


def test_numbers_keep_the_digits_the_producer_wrote(send) -> None:
    code, err, stored, _ = send(
        b'{"uuid": 19393572368547369350319949416899715727, "segment": 14356, '
        b'"dpuuid": 4250948725049857}\n'
        b'{"uuid": 19393572368547369350319949416899715728, "segment": 1e3, '
        b'"dpuuid": 42509487250498570001}\n'
        b'{"uuid": 7, "segment": 14356.0, "dpuuid": "D7", "ts": 1469636242.250}\n'
        b'{"uuid": -0, "segment": 1E+3, "dpuuids": {"12345": 42509487250498570001}, '
        b'"regions": true}\n')
    assert (code, err) == (0, "")
    assert stored == [
        {"uuid": "19393572368547369350319949416899715727", "segment": "14356",
         "dpuuid": "4250948725049857"},
        {"uuid": "19393572368547369350319949416899715728", "segment": "1e3",
         "dpuuid": "42509487250498570001"},
        {"uuid": "7", "segment": "14356.0", "dpuuid": "D7", "ts": "1469636242.250"},
        {"uuid": "-0", "segment": "1E+3", "dpuuids": '{"12345":"42509487250498570001"}',
         "regions": "true"},
    ]


def test_lines_are_split_on_newline_only(send) -> None:
    """U+2028, U+2029 and U+0085 are valid inside a JSON string; CR LF and a BOM are fine."""
    content = ('\ufeff{"uuid": "a\u2028b", "segment": "s\u0085t", "dpuuid": "d\u2029e"}\r\n'
               '\r\n   \n'
               '{"uuid": "u\\u2028v", "segment": "s", "dpuuid": "d"}\r\n')
    code, err, stored, _ = send(content.encode())
    assert (code, err) == (0, "")
    assert stored == [
        {"uuid": "a\u2028b", "segment": "s\u0085t", "dpuuid": "d\u2029e"},
        {"uuid": "u\u2028v", "segment": "s", "dpuuid": "d"},
    ]


def test_a_file_that_is_not_utf8_is_one_line(send) -> None:
    head = b'{"uuid": "u1", "segment": "s", "dpuuid": "d"}\n{"uuid": "Jos'
    code, err, stored, path = send(head + b'\xe9"}\n')  # Latin-1 for é
    assert (code, err, stored) == (
        1, f"iris: {path}: not UTF-8 (byte 0xe9 at offset {len(head)})\n", [])


@pytest.mark.parametrize(("line", "reason"), [
    ('{"uuid": "u", "uuid": "v", "segment": "s", "dpuuid": "d"}', "field 'uuid' is given twice"),
    ('{"uuid": "u", "segment": NaN, "dpuuid": "d"}', "not valid JSON"),
    ('{"uuid": "u", "segment": Infinity, "dpuuid": "d"}', "not valid JSON"),
    ('\u2028', "not valid JSON"),
    ('["u", "s"]', "each line must be a JSON object"),
    ('{"uuid": "\\ud800", "segment": "s", "dpuuid": "d"}', "field 'uuid' is not valid UTF-8"),
    ('{"uuid": "u", "segment": "s", "dpuuid": "d", "status": true}',
     "status must be 0 or 1, not 'true'"),
])
def test_a_bad_line_stops_the_whole_file(send, line: str, reason: str) -> None:
    good = '{"uuid": "u1", "segment": "s", "dpuuid": "d"}\n'
    code, err, stored, path = send((good + line + "\n" + good).encode())
    assert (code, err, stored) == (1, f"iris: {path}:2: {reason}\n", [])
