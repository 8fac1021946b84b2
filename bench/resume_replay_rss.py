#!/usr/bin/env python3
"""bench/resume_replay_rss.py BIN [PORT [SERVE_ARGS...]]: issue 17's 'resume from last_seq 0
on a socket that never reads', at full scale, against a firstcall binary; prints the
server's RSS and its high-water mark before the resume, 5 s and 40 s after it, and the
slow-socket cuts.

Bob's session collects 4000 unacknowledged signals of 60 KB (8 calls from 8 devices of
alice, each paced under the hub's rate limit, while bob is away), then a socket with a
4 KiB receive buffer resumes it from seq 0 and never reads. Loopback only; the server is
started here and stopped by its PID. Uses dev tokens: pass --dev in SERVE_ARGS where
`serve` needs it.
"""
import json, os, socket, struct, subprocess, sys, threading, time, tempfile, re

BIN, PORT = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 18090
EXTRA = sys.argv[3:]
DEVICES, PER = 8, 500

def frame(op, payload):
    key = os.urandom(4)
    n = len(payload)
    h = bytes([0x80 | op])
    if n < 126: h += bytes([0x80 | n])
    elif n < 65536: h += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: h += bytes([0x80 | 127]) + struct.pack(">Q", n)
    k = (key * (n // 4 + 1))[:n]
    return h + key + bytes(a ^ b for a, b in zip(payload, k))

def fast_frame(op, payload):
    # masking with a zero key is valid: the payload goes as is
    n = len(payload)
    h = bytes([0x80 | op])
    if n < 126: h += bytes([0x80 | n])
    elif n < 65536: h += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: h += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return h + b"\0\0\0\0" + payload

def connect(rcvbuf=None):
    s = socket.socket()
    if rcvbuf: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", PORT))
    s.sendall(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"): head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s

class Reader(threading.Thread):
    def __init__(self, s):
        super().__init__(daemon=True); self.s = s; self.buf = b""; self.msgs = []; self.cv = threading.Condition()
    def run(self):
        while True:
            try: d = self.s.recv(1 << 16)
            except OSError: return
            if not d: return
            self.buf += d
            while len(self.buf) >= 2:
                n = self.buf[1] & 0x7f; off = 2
                if n == 126:
                    if len(self.buf) < 4: break
                    n = struct.unpack(">H", self.buf[2:4])[0]; off = 4
                elif n == 127:
                    if len(self.buf) < 10: break
                    n = struct.unpack(">Q", self.buf[2:10])[0]; off = 10
                if len(self.buf) < off + n: break
                p = self.buf[off:off + n]; op = self.buf[0] & 15; self.buf = self.buf[off + n:]
                if op == 1:
                    with self.cv: self.msgs.append(json.loads(p)); self.cv.notify_all()
    def wait(self, pred, t=10):
        end = time.time() + t
        with self.cv:
            while True:
                for m in self.msgs:
                    if pred(m): return m
                if time.time() > end: raise TimeoutError
                self.cv.wait(0.1)

def rss():
    st = open(f"/proc/{srv.pid}/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", st).group(1)) // 1024 for k in ("VmRSS", "VmHWM")}

def metric(name):
    s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    b = b""
    while True:
        d = s.recv(65536)
        if not d: break
        b += d
    for l in b.decode().splitlines():
        if l.startswith(name): return l.split()[-1]
    return "0"

d = tempfile.mkdtemp()
srv = subprocess.Popen([BIN, "serve", "--http-listen", f"127.0.0.1:{PORT}", "--turn-listen", f"127.0.0.1:{PORT+1}", "--turn-secret", "s", "--log", "warn", "--data-dir", d] + EXTRA, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", PORT)).close(); break
        except OSError: time.sleep(0.1)
    bob = connect(); rb = Reader(bob); rb.start()
    bob.sendall(frame(1, b'{"type":"hello","token":"dev:bob","device":"d"}'))
    session = rb.wait(lambda m: m["type"] == "welcome")["session"]
    alices = []
    for i in range(DEVICES):
        a = connect(); ra = Reader(a); ra.start()
        a.sendall(frame(1, json.dumps({"type": "hello", "token": "dev:alice", "device": f"a{i}"}).encode()))
        ra.wait(lambda m: m["type"] == "welcome")
        a.sendall(frame(1, json.dumps({"type": "call.invite", "seq": 1, "call": f"c{i}", "to": "bob", "media": "audio", "sdp": "o"}).encode()))
        alices.append((a, ra))
    for i in range(DEVICES):
        rb.wait(lambda m, i=i: m["type"] == "call.incoming" and m.get("call") == f"c{i}")
    bob.close()
    time.sleep(0.5)
    sdp = "x" * 60000
    def flood(i):
        a, ra = alices[i]
        t0 = time.time()
        for n in range(PER):
            if n >= 190:
                # 100 frames/s sustained after a 200 burst: pace at 90/s
                due = t0 + (n - 190) / 90
                if due > time.time(): time.sleep(due - time.time())
            a.sendall(fast_frame(1, json.dumps({"type": "call.signal", "seq": n + 2, "call": f"c{i}", "data": {"sdp": {"type": "offer", "sdp": sdp}}}).encode()))
        ra.wait(lambda m: m.get("ack") == PER + 1 or (m["type"] == "ack" and m.get("seq") == PER + 1), 30)
    ts = [threading.Thread(target=flood, args=(i,)) for i in range(DEVICES)]
    [t.start() for t in ts]; [t.join() for t in ts]
    errs = sum(1 for _, ra in alices for m in ra.msgs if m["type"] == "error")
    print("unacked frames", metric("firstcall_signal_unacked_frames"), "errors to alice", errs)
    base = rss(); print("baseline", base)
    deaf = connect(rcvbuf=4096)
    deaf.sendall(frame(1, json.dumps({"type": "hello", "token": "dev:bob", "device": "d", "resume": {"session": session, "last_seq": 0}}).encode()))
    for t in (5, 40):
        time.sleep(t - (5 if t == 40 else 0))
        r = rss(); print(f"{t} s after the resume", r, "growth MiB", r["VmRSS"] - base["VmRSS"], "peak growth", r["VmHWM"] - base["VmHWM"],
                         "slow cuts", metric('firstcall_signal_sockets_cut_total{reason="slow"}'))
finally:
    srv.terminate(); srv.wait()
