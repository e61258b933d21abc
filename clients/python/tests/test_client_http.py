"""The client's HTTP behaviour against a tiny local server that answers what the test says:
the bearer token, what is retried (503, connection errors) and what is not (4xx), back-off."""

import http.server
import json
import random
import threading

import pytest

from qis_sdk import AgentClient, Backoff, OutcomePacket, Refused, Unavailable

from conftest import free_port


def packet():
    return OutcomePacket("a", "hvac", "energy-anomaly", "c", 0.5, [0.1], 1764150000.0, "n")


class Script(http.server.ThreadingHTTPServer):
    """Answers each request with the next (status, headers, body) of `answers`."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(n)))
        status, headers, body = self.server.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


ACCEPTED = (202, {}, {"id": "x" * 32, "subject": "qis.iot.hvac.energy-anomaly"})


@pytest.fixture
def server_with():
    servers = []

    def make(*answers):
        s = Script(answers)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_token_is_sent_as_a_bearer_header(server_with):
    s = server_with(ACCEPTED, ACCEPTED)
    AgentClient(s.url, token="s3cret").deposit(packet())
    AgentClient(s.url).deposit(packet())
    headers = [{k.lower(): v for k, v in seen[2].items()} for seen in s.seen]
    assert headers[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in headers[1]
    assert s.seen[0][3] == packet().encode()


def test_a_refusal_is_not_retried(server_with):
    s = server_with((422, {}, {"error": "confidence 2 is outside [0, 1]", "rule": "confidence_range"}))
    sleeps = []
    with pytest.raises(Refused) as err:
        AgentClient(s.url, sleep=sleeps.append).deposit(packet())
    assert (err.value.status, err.value.rule) == (422, "confidence_range")
    assert len(s.seen) == 1 and sleeps == []


def test_busy_is_retried_after_retry_after(server_with):
    busy = (503, {"Retry-After": "1"}, {"error": "queue full", "rule": "queue_full"})
    s = server_with(busy, busy, ACCEPTED)
    sleeps = []
    d = AgentClient(s.url, sleep=sleeps.append, backoff=Backoff(attempts=4, base=0.01)).deposit(packet())
    assert d.id == "x" * 32 and not d.spooled
    assert len(s.seen) == 3 and sleeps == [1.0, 1.0]


def test_an_absent_agent_is_tried_with_bounded_jittered_back_off():
    sleeps = []
    client = AgentClient(f"http://127.0.0.1:{free_port()}", sleep=sleeps.append,
                         backoff=Backoff(attempts=5, base=0.1, cap=0.3), rng=random.Random(7))
    with pytest.raises(Unavailable):
        client.deposit(packet())
    assert len(sleeps) == 4
    assert all(0 <= s <= min(0.3, 0.1 * 2**i) for i, s in enumerate(sleeps)), sleeps
    assert len(set(sleeps)) == 4  # jittered


def test_a_refused_batch_names_its_lines(server_with):
    refused = [{"line": 2, "rule": "invalid_token", "error": "domain"}]
    s = server_with((422, {}, {"error": "1 of 2 lines refused", "rule": "invalid_token",
                               "refused": refused}))
    with pytest.raises(Refused) as err:
        AgentClient(s.url).deposit_batch([packet(), packet()])
    assert err.value.refused == refused
    assert s.seen[0][1] == "/v1/outcomes/batch"
    assert s.seen[0][3] == packet().encode() + b"\n" + packet().encode() + b"\n"
