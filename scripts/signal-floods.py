#!/usr/bin/env python3
"""Hostile signaling clients against a `firstcall` binary, on loopback: the rows of
issue 17 that concern the signaling hub. For each flood it starts a fresh server (JWT
mode), runs the flood and prints the server's RSS growth, an unrelated user's ping RTT
during the flood, and what the flood obtained.

    scripts/signal-floods.py BINARY [SCENARIO ...]

Scenarios: held, resume, echo, invites, devices, timers (default: all). Standard
library only; frames are sent with a zero mask (valid: RFC 6455 only asks clients to
mask). Stops only the servers it started.
"""

import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

SECRET = "flood-key"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, binary, extra=()):
        self.http = ("127.0.0.1", free_port())
        turn = free_port()
        self.dir = tempfile.mkdtemp(prefix="floods-")
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--http-listen", "%s:%d" % self.http, "--turn-listen", "127.0.0.1:%d" % turn,
             "--relay-ports", "24000-24100", "--data-dir", self.dir, "--turn-secret", "s",
             "--jwt-secret", SECRET, "--log", "warn", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.binary = binary
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(self.http, timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("server did not start")

    def rss_mib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0

    def token(self, user):
        out = subprocess.run([self.binary, "token", "--jwt-secret", SECRET, "--user", user, "--ttl", "1h"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class WS:
    """A WebSocket that only reads when asked to."""

    def __init__(self, server, rcvbuf=None):
        self.s = socket.socket()
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.connect(server.http)
        self.s.sendall(("GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self.s.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = b""
        self.lock = threading.Lock()
        self.seq = 0

    def send(self, text):
        p = text.encode()
        n = len(p)
        if n < 126:
            h = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            h = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            h = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        with self.lock:
            self.s.sendall(h + b"\0\0\0\0" + p)

    def frame(self, seqd):
        """Send a sequenced frame (a dict), numbering it."""
        self.seq += 1
        seqd["seq"] = self.seq
        self.send(json.dumps(seqd))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=5):
        """(opcode, payload) of the next frame."""
        self.s.settimeout(timeout)
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def next_json(self, timeout=5):
        while True:
            op, p = self.recv(timeout)
            if op == 8:
                raise EOFError("closed %d" % struct.unpack("!H", p[:2])[0] if len(p) >= 2 else "closed")
            if op == 1:
                return json.loads(p)

    def hello(self, token, device, resume=None):
        h = {"type": "hello", "token": token, "device": device}
        if resume:
            h["resume"] = resume
        self.send(json.dumps(h))
        return self.next_json()

    def close(self):
        self.s.close()


class Pinger:
    """An unrelated user pinging the server every 50 ms during a flood, from a process of
    its own (so that the flood's Python does not delay it)."""

    def __init__(self, server):
        token = server.token("bystander")
        self.results = multiprocessing.Queue()
        self.halt = multiprocessing.Event()
        self.proc = multiprocessing.Process(target=Pinger.run, args=(server.http, token, self.halt, self.results),
                                            daemon=True)

    def start(self):
        self.proc.start()

    @staticmethod
    def run(http, token, halt, results):
        class S:
            pass
        srv = S()
        srv.http = http
        ws = WS(srv)
        ws.hello(token, "p")
        rtts = []
        while not halt.is_set():
            t = time.perf_counter()
            ws.send('{"type":"ping"}')
            try:
                while True:
                    v = ws.next_json(10)
                    if v.get("type") == "pong":
                        break
                    if v.get("type") == "ping":
                        ws.send('{"type":"pong"}')
            except Exception:
                rtts.append(10.0)
                break
            rtts.append(time.perf_counter() - t)
            time.sleep(0.05)
        results.put(rtts)

    def summary(self):
        self.halt.set()
        r = sorted(self.results.get(timeout=20))
        self.proc.join(5)
        if not r:
            return "no pings"
        p = lambda q: r[min(len(r) - 1, int(q * len(r)))] * 1000
        return "ping RTT p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d pings)" % (p(0.5), p(0.99), r[-1] * 1000, len(r))


def paced(n, per_sec, f):
    """Call f(i) n times at per_sec (under the server's 100 frames/s limit)."""
    t0 = time.time()
    for i in range(n):
        f(i)
        ahead = t0 + (i + 1) / per_sec - time.time()
        if ahead > 0:
            time.sleep(ahead)


def drain(ws, seconds):
    """Read (and count by type) what arrives for `seconds`."""
    counts = {}
    end = time.time() + seconds
    while time.time() < end:
        try:
            op, p = ws.recv(max(0.01, end - time.time()))
        except (socket.timeout, TimeoutError):
            break
        if op == 1:
            t = json.loads(p).get("type")
            counts[t] = counts.get(t, 0) + 1
            if t == "ping":
                ws.send('{"type":"pong"}')
    return counts


def held(binary):
    srv = Server(binary)
    base = srv.rss_mib()
    pinger = Pinger(srv)
    pinger.start()
    alice = WS(srv)
    alice.hello(srv.token("alice"), "a")
    alice.frame({"type": "call.invite", "call": "h", "to": "bob", "media": "audio", "sdp": "o"})
    big = "x" * 60_000
    paced(1000, 95, lambda i: alice.frame({"type": "call.signal", "call": "h",
                                            "data": {"sdp": {"type": "offer", "sdp": "%d%s" % (i, big)}}}))
    time.sleep(0.5)
    after_signals = srv.rss_mib()
    steps = []
    devices = []
    for d in range(3):
        ws = WS(srv, rcvbuf=4096)  # a callee device that never reads
        ws.hello(srv.token("bob"), "b%d" % d)
        devices.append(ws)
        time.sleep(1.0)
        steps.append(srv.rss_mib())
    counts = drain(alice, 1)
    print("held: 1000 x 60 KB signals while ringing: RSS %.0f -> %.0f MiB; then %s MiB as 3 callee devices connected; "
          "caller got %s; %s" % (base, after_signals, " / ".join("%.0f" % s for s in steps), counts, pinger.summary()))
    srv.stop()


def resume(binary):
    srv = Server(binary)
    alice = WS(srv)
    alice.hello(srv.token("alice"), "a")
    bob = WS(srv, rcvbuf=4096)
    w = bob.hello(srv.token("bob"), "b")
    alice.frame({"type": "call.invite", "call": "r", "to": "bob", "media": "audio", "sdp": "o"})
    bob.next_json()
    bob.frame({"type": "call.accept", "call": "r", "sdp": "a"})
    drain(alice, 0.3)
    bob.close()  # bob's network goes; his session keeps what alice sends
    time.sleep(0.3)
    base = srv.rss_mib()
    pinger = Pinger(srv)
    pinger.start()
    big = "x" * 60_000
    paced(1000, 95, lambda i: alice.frame({"type": "call.signal", "call": "r",
                                            "data": {"sdp": {"type": "offer", "sdp": "%d%s" % (i, big)}}}))
    time.sleep(0.5)
    kept = srv.rss_mib()
    # Resume from last_seq 0 on a socket that never reads.
    again = WS(srv, rcvbuf=4096)
    again.send(json.dumps({"type": "hello", "token": srv.token("bob"), "device": "b",
                           "resume": {"session": w["session"], "last_seq": 0}}))
    time.sleep(2)
    replayed = srv.rss_mib()
    time.sleep(10)
    later = srv.rss_mib()
    counts = drain(alice, 0.5)
    print("resume: 1000 x 60 KB to a detached session: RSS %.0f -> %.0f MiB; resume from last_seq 0 on a socket that "
          "never reads: %.0f MiB, %.0f MiB 10 s later; caller got %s; %s"
          % (base, kept, replayed, later, counts, pinger.summary()))
    srv.stop()


def echo(binary):
    srv = Server(binary)
    base = srv.rss_mib()
    pinger = Pinger(srv)
    pinger.start()
    m = WS(srv)
    m.hello(srv.token("mallory"), "m")
    got = {"bytes": 0}

    def reader():  # reads its errors, never acknowledges them
        try:
            while True:
                op, p = m.recv(30)
                got["bytes"] += len(p)
        except Exception:
            pass

    threading.Thread(target=reader, daemon=True).start()
    t = "t" * 60_000
    paced(1000, 95, lambda i: m.frame({"type": t}))
    time.sleep(1)
    print("echo: 1000 unknown_type errors for a 60 KB type, read, never acknowledged: RSS %.0f -> %.0f MiB, "
          "%.1f MB of errors sent; %s" % (base, srv.rss_mib(), got["bytes"] / 1e6, pinger.summary()))
    srv.stop()


def invites(binary):
    srv = Server(binary)
    victim = WS(srv)
    victim.hello(srv.token("victim"), "v")
    m = WS(srv)
    m.hello(srv.token("mallory"), "m")
    for i in range(8):
        m.frame({"type": "call.invite", "call": "m%d" % i, "to": "victim", "media": "audio", "sdp": "o"})
    time.sleep(0.3)
    drain(victim, 0.3)
    carol = WS(srv)
    carol.hello(srv.token("carol"), "c")
    victim.frame({"type": "call.invite", "call": "v1", "to": "carol", "media": "audio", "sdp": "o"})
    got = drain(carol, 1)
    mine = drain(victim, 0.3)
    print("invites: 8 invites from one identity ringing the victim; the victim's own invite: %s (carol got %s)"
          % ("refused " + str(mine) if "error" in mine else "placed", got))
    srv.stop()


def devices(binary):
    srv = Server(binary)
    base = srv.rss_mib()
    tok = srv.token("alice")
    live, refused = [], 0
    for d in range(300):
        ws = WS(srv)
        try:
            v = ws.hello(tok, "d%d" % d)
            if v.get("type") == "welcome":
                live.append(ws)
            else:
                refused += 1
                ws.close()
        except EOFError:
            refused += 1
    print("devices: one token, 300 device ids: %d live sessions, %d refused; RSS %.0f -> %.0f MiB"
          % (len(live), refused, base, srv.rss_mib()))
    srv.stop()


def timers(binary):
    srv = Server(binary, ["--credential-ttl", "10s"])
    tok = srv.token("alice")
    ws = WS(srv)
    w = ws.hello(tok, "a")
    last = 0
    for _ in range(50):
        ws.close()
        ws = WS(srv)
        w2 = ws.hello(tok, "a", {"session": w["session"], "last_seq": last})
        assert w2["resumed"], w2
    t0 = time.time()
    counts = {}
    seq = 0
    end = t0 + 17
    while time.time() < end:
        try:
            op, p = ws.recv(max(0.01, end - time.time()))
        except (socket.timeout, TimeoutError):
            break
        if op != 1:
            continue
        v = json.loads(p)
        counts[v.get("type")] = counts.get(v.get("type"), 0) + 1
        if v.get("type") == "ping":
            ws.send('{"type":"pong"}')
        if "seq" in v:
            seq = v["seq"]
            ws.send(json.dumps({"type": "ack", "seq": seq}))
    print("timers: 50 resumes, then 17 s (credential TTL 10 s): %d pings, %d ice_servers frames"
          % (counts.get("ping", 0), counts.get("ice_servers", 0)))
    srv.stop()


if __name__ == "__main__":
    binary = sys.argv[1]
    names = sys.argv[2:] or ["held", "resume", "echo", "invites", "devices", "timers"]
    for n in names:
        globals()[n](binary)
