"""--log-format and --log-level override the config's log settings."""

import json
import re

from e2e_support import make_config, rng_features
from hierarchicalvlm.client import Client

# Lines gRPC's core library writes itself ("E1129 05:54:17.8 ..."), not hvlm's logger.
GRPC_CORE_LINE = re.compile(r"^[EWID]\d{4} ")


def test_json_logs_at_debug_level(start_server):
    server = start_server(make_config(log_format="text", log_level="info"), name="json-logs",
                          extra_args=("--log-format", "json", "--log-level", "debug"))
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "logged")
        list(client.stream("logged", [rng_features(1, 8, 64)]))
    assert server.stop() == 0
    records = []
    for line in server.stderr_text().splitlines():
        if not line.strip() or GRPC_CORE_LINE.match(line):
            continue
        record = json.loads(line)  # every line of hvlm's log is one JSON object
        assert {"ts", "level", "msg"} <= record.keys(), line
        records.append(record)
    messages = [r["msg"] for r in records]
    assert "hvlm-server listening" in messages
    listening = records[messages.index("hvlm-server listening")]
    assert listening["address"] == server.address
    assert any(r["level"] == "debug" and r["msg"] == "request" and r.get("rpc") == "StreamSegments"
               and r.get("session_id") == "logged" for r in records), messages
    assert "received SIGTERM" in messages and messages[-1] == "stopped"


def test_log_level_flag_hides_info(start_server):
    server = start_server(make_config(log_level="debug"), name="quiet",
                          extra_args=("--log-level", "warn"))
    with Client(server.address, timeout=30) as client:
        client.open_session("small", "quiet")
    assert server.stop() == 0
    text = server.stderr_text()
    assert "stack has no weights file" in text  # a warning
    assert "hvlm-server listening" not in text and "session opened" not in text
