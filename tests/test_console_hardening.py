"""The console's web side under attack, against the real ``edge console serve`` process.

Issue 21: a concurrent burst of wrong passwords, a flood of logins with unknown names
(the server's memory read from ``/proc``), spoofed ``X-Forwarded-For``, attacker-chosen
text in ``/login?error=``, nested JSON, oversized bodies and many-field forms (sent on
raw sockets, as an attacker would), and a user's sessions ending with a password reset,
a role change, ``disable`` and ``remove``.

Each test speaks from its own loopback source address (``127.0.0.N``: Linux routes the
whole of 127/8 to ``lo``), so the per-address login limit of one test does not touch
another's.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.broker import Broker
from tests.fixtures.browser import PASSWORD, ConsoleServer, csrf_of

CONCURRENCY = 2
"""``[console] login_concurrency`` of this module's console: password checks at once."""


@pytest.fixture(scope="module")
def console(shared_broker: Broker,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:  # fmt: skip
    server = ConsoleServer(shared_broker, tmp_path_factory.mktemp("console"), "console-hard",
                           extra=f'trusted_proxies = ["127.0.0.2"]\n'
                                 f"login_concurrency = {CONCURRENCY}\n")  # fmt: skip
    for name, role in (("pc-burst", "operator"), ("pc-json", "operator"),
                       ("sgt-hold", "supervisor"), ("pc-fired", "operator"),
                       ("aud-hard", "auditor")):  # fmt: skip
        server.add_user(name, role)
    server.start()
    yield server
    server.stop()


def _client(console: ConsoleServer, source: str) -> httpx.Client:
    return httpx.Client(base_url=console.url, timeout=30,
                        transport=httpx.HTTPTransport(local_address=source))  # fmt: skip


def _login_token(client: httpx.Client | httpx.AsyncClient, text: str) -> str:
    return text.split('name="csrf" value="')[1].split('"')[0]


def _burst(console: ConsoleServer, source: str, names: list[str],
           password: str = "not the password") -> list[httpx.Response]:  # fmt: skip
    """POST /login for each name at once (one connection each) from ``source``."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(names) + 1)
        transport = httpx.AsyncHTTPTransport(local_address=source, limits=limits)
        async with httpx.AsyncClient(base_url=console.url, timeout=120,
                                     transport=transport) as client:  # fmt: skip
            token = _login_token(client, (await client.get("/login")).text)
            return list(await asyncio.gather(*(
                client.post("/login", data={"name": n, "password": password, "csrf": token})
                for n in names)))  # fmt: skip

    return asyncio.run(run())


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; returns that, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _proc_kib(pid, "VmRSS")


def _trail(console: ConsoleServer, event: str) -> list[dict[str, object]]:
    import json

    from edge.console.store import Store

    store = Store.open(f"sqlite:///{console.db}")
    try:
        rows = [r for r in store.console_log(2000) if r["event"] == event]
    finally:
        store.close()
    return [{**r, "detail": json.loads(str(r["detail"]))} for r in rows]


# -- login: the limit holds under a concurrent burst; memory stays flat under a flood ------


def test_a_concurrent_burst_checks_at_most_the_limit(console: ConsoleServer) -> None:
    """60 wrong guesses at once on a user, and 60 on a name nobody has (unknown names
    count like known ones): at most the limit of each is checked (issue 21: 42 were)."""
    from edge.console.auth import MAX_FAILURES

    async def both() -> list[list[httpx.Response]]:
        return list(await asyncio.gather(
            asyncio.to_thread(_burst, console, "127.0.0.10", ["pc-burst"] * 60),
            asyncio.to_thread(_burst, console, "127.0.0.11", ["no-such-user"] * 60)))

    checked = []
    for responses in asyncio.run(both()):
        codes = [r.status_code for r in responses]
        checked.append(codes.count(401))  # 401: the password was checked (and wrong)
        assert 1 <= checked[-1] <= MAX_FAILURES and codes.count(429) == 60 - checked[-1], codes
        assert all(int(r.headers["retry-after"]) > 0 for r in responses if r.status_code == 429)
    with _client(console, "127.0.0.12") as client:
        token = _login_token(client, client.get("/login").text)
        # On a loaded machine some of the burst are refused as busy (the bound on concurrent
        # password checks), which records no attempt: the guesses left up to the limit are
        # still checked, one at a time, and then even the right password is refused. Each
        # answer is a new login page with a new double-submit token (cookie and field).
        for _ in range(MAX_FAILURES - checked[0]):
            r = client.post("/login", data={"name": "pc-burst", "password": "still wrong",
                                            "csrf": token})  # fmt: skip
            assert r.status_code == 401, r.status_code
            token = _login_token(client, r.text)
        r = client.post("/login", data={"name": "pc-burst", "password": PASSWORD,
                                        "csrf": token})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_a_login_flood_keeps_the_servers_memory_bounded(console: ConsoleServer) -> None:
    """40 logins with unknown names at once, each from its own address (so no limit stops
    them): at most ``login_concurrency`` argon2 checks run at once; the rest wait briefly
    or are refused with 429 and Retry-After. The bound is argon2's memory x the
    concurrency, doubled, plus 64 MiB for everything else (issue 21: 116 MB -> 2.4 GB)."""
    from edge.console.auth import hasher

    assert console.proc is not None
    pid = console.proc.pid
    baseline = _reset_peak(pid)
    results: list[int] = []
    retry_after: list[str] = []

    def one(i: int) -> None:
        with _client(console, f"127.0.1.{i + 1}") as client:
            token = _login_token(client, client.get("/login").text)
            r = client.post("/login", data={"name": f"ghost-{i}", "password": "guess-1234",
                                            "csrf": token})
            results.append(r.status_code)
            if r.status_code == 429:
                retry_after.append(r.headers.get("retry-after", ""))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    peak = _proc_kib(pid, "VmHWM")
    bound = 2 * CONCURRENCY * hasher.memory_cost + 64 * 1024  # KiB
    assert sorted(set(results)) <= [401, 429] and len(results) == 40, results
    assert results.count(401) >= 1 and all(v.isdigit() for v in retry_after), retry_after
    assert peak - baseline <= bound, f"peak {peak} KiB over a baseline of {baseline} KiB"


def test_forwarded_for_counts_only_from_a_configured_proxy(console: ConsoleServer) -> None:
    def fail_from(source: str, forwarded: str) -> None:
        with _client(console, source) as client:
            token = _login_token(client, client.get("/login").text)
            client.post("/login", headers={"X-Forwarded-For": forwarded},
                        data={"name": "pc-xff", "password": "wrong", "csrf": token})

    fail_from("127.0.0.1", "203.0.113.7")  # loopback, but not a configured proxy: ignored
    fail_from("127.0.0.2", "198.51.100.9")  # the configured proxy: its header counts
    clients = [e["detail"]["client"] for e in _trail(console, "login_refused")
               if e["actor"] == "pc-xff"]  # fmt: skip
    assert clients == ["198.51.100.9", "127.0.0.1"]


def test_the_login_page_shows_only_its_own_messages(console: ConsoleServer) -> None:
    with _client(console, "127.0.0.21") as client:
        spoof = client.get("/login", params={"error": "Account suspended: call 0800 123 456"})
        assert spoof.status_code == 200 and "0800" not in spoof.text
        assert 'id="login-error"' not in spoof.text
        token = _login_token(client, spoof.text)
        wrong = client.post("/login", data={"name": "nobody-here", "password": "x" * 12,
                                            "csrf": token})
        assert wrong.status_code == 401
        assert '<p class="error" id="login-error">wrong user name or password</p>' in wrong.text
        # The answer is a new login page with a new double-submit token: the old one is
        # refused, the new one is checked.
        again = {"name": "nobody-here", "password": "y" * 12}
        assert client.post("/login", data={**again, "csrf": token}).status_code == 403
        fresh = _login_token(client, wrong.text)
        assert fresh != token
        assert client.post("/login", data={**again, "csrf": fresh}).status_code == 401


# -- request bodies: bounded before parsing -------------------------------------------------


def _raw_request(port: int, head: bytes, chunks: Iterator[bytes] | None = None,
                 source: str = "127.0.0.30") -> tuple[bytes, int]:  # fmt: skip
    """Send ``head`` (and then ``chunks``, until the server stops taking them) on a raw
    socket; returns (what the server answered, body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    answer = bytearray()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                answer.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    try:
        sock.sendall(head)
        for chunk in chunks or iter(()):
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the server closed the connection (or stopped reading): refused
        pass
    finally:
        reader.join(15)  # the server answers and closes the connection
        sock.close()
    return bytes(answer), sent


def test_oversized_bodies_and_many_field_forms_are_refused_before_parsing(
    console: ConsoleServer,
) -> None:
    assert console.proc is not None
    pid = console.proc.pid
    # A declared 400 MB body: refused on its Content-Length, before any of it is read.
    head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
            b"urlencoded\r\nContent-Length: 400000000\r\n\r\n")
    answer, _ = _raw_request(console.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # The same without a length (chunked): refused once the bytes read pass the bound.
    baseline = _reset_peak(pid)
    chunk = b"a" * 65536

    def chunks() -> Iterator[bytes]:
        for _ in range(1536):  # 96 MiB if nothing stopped it
            yield b"%x\r\n%s\r\n" % (len(chunk), chunk)

    head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
            b"urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer, sent = _raw_request(console.port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 1536 * len(chunk), "the server read it all"  # it closed the connection
    assert _proc_kib(pid, "VmHWM") - baseline < 32 * 1024, "the server kept the body"
    # A multipart form of 900 fields (1 KiB each) to /login: too large, never parsed;
    # one of 100 small fields: under the size bound, refused on the field count.
    for fields, size, code in ((900, 1024, b"413"), (100, 4, b"400")):
        boundary = b"b0undary"
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\n%s\r\n"
                        % (boundary, i, b"x" * size) for i in range(fields)) + \
            b"--%s--\r\n" % boundary  # fmt: skip
        head = (b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                b"boundary=%s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (boundary, len(body)))  # fmt: skip
        answer, _ = _raw_request(console.port, head + body)
        assert answer.startswith(b"HTTP/1.1 " + code), (fields, answer[:300])
    with _client(console, "127.0.0.31") as client:  # the console still answers
        assert client.get("/healthz").status_code == 200


def test_nested_or_malformed_json_is_a_clear_4xx_never_a_500(console: ConsoleServer) -> None:
    ops = console.session("pc-json")
    sup = console.session("sgt-hold")
    headers = {"X-CSRF-Token": csrf_of(ops), "Content-Type": "application/json"}
    sup_headers = {"X-CSRF-Token": csrf_of(sup), "Content-Type": "application/json"}
    deep = b'{"decision": ' + b"[" * 30000 + b"]" * 30000 + b"}"
    for body, code in ((b"[" * 50000, 400), (deep, 400), (b'{"decision": {"a": 1}}', 422),
                       (b'{"decision": "confirmed", "decision": "rejected"}', 400),
                       (b'{"decision": "confirmed", "extra": 1}', 422),
                       (b"\xff\xfe", 400), (b"NaN", 400)):  # fmt: skip
        r = ops.post("/api/alerts/no-such-alert/adjudicate", content=body, headers=headers)
        assert r.status_code == code, (body[:40], r.status_code, r.text[:200])
        assert isinstance(r.json()["detail"], str) and "\n" not in r.json()["detail"]
    for body, code in ((b'{"on": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400),
                       (b'{"on": "yes"}', 422), (b"[1, 2]", 422)):  # fmt: skip
        r = sup.post("/api/alerts/no-such-alert/hold", content=body, headers=sup_headers)
        assert r.status_code == code, (body[:40], r.status_code, r.text[:200])
    r = ops.post("/api/alerts/no-such-alert/adjudicate", json={"decision": "confirmed"},
                 headers=headers)
    assert r.status_code == 404  # a well-formed body reaches the service


# -- users: a reset, a role change, disable and remove end sessions at once ----------------


def test_reset_role_change_disable_and_remove_end_the_users_sessions(
    console: ConsoleServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.cli import main

    def edge(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = main(["console", "user", *args, "--config", str(console.config)])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    def alive(client: httpx.Client) -> bool:
        return client.get("/alerts").status_code == 200

    first = console.session("pc-fired")
    new_password = "another horse battery"
    code, _, err = edge("add", "pc-fired", "--role", "operator", "--replace",
                        "--password-stdin", stdin=new_password + "\n")
    assert code == 0, err
    assert not alive(first)  # a password reset ends the sessions opened before it
    second = console.session("pc-fired", new_password)
    assert edge("add", "pc-fired", "--role", "auditor", "--replace", "--password-stdin",
                stdin=new_password + "\n")[0] == 0
    assert second.get("/audit").status_code == 303  # a role change too
    third = console.session("pc-fired", new_password)
    assert edge("disable", "pc-fired")[:2] == (0, "user pc-fired disabled; 1 session ended\n")
    assert third.get("/audit").status_code == 303
    with _client(console, "127.0.0.40") as client:
        token = _login_token(client, client.get("/login").text)
        r = client.post("/login", data={"name": "pc-fired", "password": new_password,
                                        "csrf": token})
        assert r.status_code == 401
    assert edge("enable", "pc-fired")[:2] == (0, "user pc-fired enabled\n")
    fourth = console.session("pc-fired", new_password)
    code, out, _ = edge("remove", "pc-fired")
    assert (code, out) == (0, "user pc-fired removed; 1 session ended\n")
    assert fourth.get("/audit").status_code == 303
    code, _, err = edge("disable", "pc-fired")
    assert (code, err.strip()) == (2, "edge: no user pc-fired")
    code, out, _ = edge("list")
    assert code == 0 and "pc-fired" not in out and "aud-hard" in out
    for event in ("user_updated", "user_disabled", "user_enabled", "user_removed"):
        assert [e["detail"]["user"] for e in _trail(console, event)] != [], event
    assert [e["detail"]["sessions_ended"] for e in _trail(console, "user_removed")] == [1]
