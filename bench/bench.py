#!/usr/bin/env python3
"""Side-by-side benchmarks; see bench/README.md.

Every server is started here, on 127.0.0.1, with matching settings and the same
thread count, measured by the same load generator (firstcall-bench, built from
crates/client), and stopped by PID. Only loopback traffic.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
SECRET = "bench-secret"
REALM = "bench"


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_DGRAM):
    # A port free for both UDP and TCP, as TURN listens on both.
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def stun_binding_ok(port, timeout=0.3):
    """A STUN Binding request answered on 127.0.0.1:port."""
    tid = os.urandom(12)
    req = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(req, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
            return data[8:20] == tid
        except OSError:
            return False


def wait_for(cond, what, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {limit:.0f} s")


class Proc:
    """A server process we started; stopped by its own PID only."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.p.pid

    def check(self):
        if self.p.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.p.returncode}); log {self.log.name}:\n"
                               + Path(self.log.name).read_text(errors="replace")[-2000:])
        return True

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- servers

def start_firstcall(threads, tmp):
    turn, http = free_port(), free_port()
    p = Proc("firstcall", [
        str(REL / "firstcall"), "serve",
        "--http-listen", f"127.0.0.1:{http}", "--turn-listen", f"127.0.0.1:{turn}",
        "--relay-ports", "20000-44999", "--turn-secret", SECRET, "--realm", REALM,
        "--threads", str(threads), "--max-allocations", "200000",
        "--max-allocations-per-user", "200000", "--log", "warn",
        # The generators run from one address at full speed: no per-address error limit
        # (every allocation starts with a 401) and no bandwidth quota, like coturn's defaults.
        "--turn-error-rate", "0", "--max-bps", "0", "--user-max-bps", "0",
        "--data-dir", str(tmp / "firstcall-data"), "--jwt-secret", SECRET,
        # Plain peers on loopback (the call-shaped `direct` load), as coturn's --allow-loopback-peers.
        "--allow-peer", "127.0.0.0/8",
    ])
    wait_for(lambda: p.check() and stun_binding_ok(turn), "firstcall")
    return p, f"127.0.0.1:{turn}", http


def start_coturn(threads, tmp):
    turn = free_port()
    p = Proc("coturn", [
        "turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
        "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", str(turn),
        "--min-port", "45000", "--max-port", "65000",
        "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", REALM,
        "--relay-threads", str(threads), "--total-quota", "0", "--user-quota", "0",
        # Relays on loopback talk to each other: the benchmark's two clients are on one host.
        "--allow-loopback-peers", "--no-multicast-peers",
        "--log-file", str(tmp / "coturn.log"), "--simple-log", "--no-stdout-log",
        "--pidfile", str(tmp / "coturn.pid"),
    ])
    wait_for(lambda: p.check() and stun_binding_ok(turn), "coturn")
    return p, f"127.0.0.1:{turn}", None


def start_bare(threads, tmp):
    port = free_port()
    p = Proc("bare", [str(REL / "firstcall-udpfwd"), "--listen", f"127.0.0.1:{port}"])

    def ready():
        p.check()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(b"R\xff\xff\xff\xff", ("127.0.0.1", port))
                return s.recvfrom(16)[0] == b"ok"
            except OSError:
                return False

    wait_for(ready, "bare forwarder")
    return p, f"127.0.0.1:{port}", None


SERVERS = {"firstcall": start_firstcall, "coturn": start_coturn, "bare": start_bare}


def run_tool(argv, limit):
    """Run firstcall-bench; returns its JSON lines (steps and result)."""
    log(" ".join(argv[1:]))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[1]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


# ---------------------------------------------------------------- benchmarks

def bench_relay(a, tmp):
    sizes = [100] if a.quick else [100, 1000]
    flows = [1, 4] if a.quick else [1, 64]
    dur = 300 if a.quick else 1500
    start, top = (2000, 8000) if a.quick else (20000, 5_000_000)
    rows = []
    for name in ["firstcall", "coturn", "bare"]:
        if not have_server(name):
            continue
        for size in sizes:
            for n in flows:
                p, addr, _ = SERVERS[name](a.threads, tmp)
                try:
                    lines = run_tool([str(REL / "firstcall-bench"), "relay", "--server", addr,
                                      "--kind", "bare" if name == "bare" else "turn",
                                      "--secret", SECRET, "--flows", str(n), "--size", str(size),
                                      "--start", str(start), "--max", str(top),
                                      "--duration-ms", str(dur), "--server-pid", str(p.pid)], 900)
                    p.check()
                finally:
                    p.stop()
                res = next((l["result"] for l in lines if "result" in l), None)
                steps = [l for l in lines if l.get("step")]
                rows.append({"server": name, "size": size, "flows": n, "result": res, "steps": steps})
                log(f"relay {name} {size} B x{n}: {res}")
    return rows


def bench_calls(a, tmp):
    """Call-shaped relay load (issue 23): N calls, audio both ways and optionally video,
    paced as libwebrtc sends them, one datagram per syscall; each server at the same fixed
    loads, in one run. CPU per million packets relayed is the figure."""
    # (calls, video, peers): `relayed`, both parties relayed by the server (each packet
    # crosses it twice); `direct`, one party relayed and the other a plain peer (once).
    # The bare forwarder crosses once per packet: it runs the `direct` loads only.
    loads = ([(10, False, "relayed"), (10, True, "relayed"), (10, False, "direct")] if a.quick else
             [(500, False, "relayed"), (2000, False, "relayed"), (100, True, "relayed"), (300, True, "relayed"),
              (500, False, "direct"), (2000, False, "direct"), (300, True, "direct")])
    dur = 1000 if a.quick else 6000
    rows = []
    for name in ["firstcall", "coturn", "bare"]:
        if not have_server(name):
            continue
        for calls, video, peers in loads:
            if name == "bare" and peers != "direct":
                continue
            p, addr, _ = SERVERS[name](a.threads, tmp)
            try:
                lines = run_tool([str(REL / "firstcall-bench"), "calls", "--server", addr,
                                  "--kind", "bare" if name == "bare" else "turn", "--secret", SECRET,
                                  "--calls", str(calls), "--video", "1" if video else "0", "--peers", peers,
                                  "--duration-ms", str(dur), "--server-pid", str(p.pid)], 900)
                p.check()
            finally:
                p.stop()
            res = next((l["result"] for l in lines if "result" in l), None)
            rows.append({"server": name, "calls": calls, "video": video, "peers": peers, "result": res})
            log(f"calls {name} {calls}{' +video' if video else ''} {peers}: {res}")
    return rows


class VethPair:
    """Two network namespaces of our own joined by one veth: the generator's (198.18.1.1)
    and the server's (198.18.1.2), for the XDP bench. Both ends run NAPI in kernel threads
    (GRO on, `threaded`), so the server side's receive work is a thread whose CPU can be
    counted with the server's. XDP_TX on a veth needs an XDP program on the other end (the
    veth driver drops XDP frames to a peer without one), so the generator's end carries the
    fast path's own object with empty maps, which passes everything."""

    def __init__(self, obj):
        tag = os.getpid()
        self.gen, self.srv = f"fcxg-{tag}", f"fcxs-{tag}"
        run = lambda argv: subprocess.run(argv, check=True, capture_output=True)
        for ns in (self.gen, self.srv):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", "xg0", "netns", self.gen, "type", "veth", "peer", "name", "xs0", "netns", self.srv])
        for ns, dev, addr in ((self.gen, "xg0", "198.18.1.1/24"), (self.srv, "xs0", "198.18.1.2/24")):
            run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            # TSO off: veth hands a UDP skb from a device with TSO to the peer's NAPI only if
            # the peer forwards UDP GRO; otherwise it goes to the backlog, whose softirq runs in
            # the sending task's context and is charged to it (the generator's receive work to
            # the server's send, the server's receive work to the generator).
            run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on", "tso", "off"])
            run(["ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"])
        run(["ip", "-n", self.gen, "link", "set", "dev", "xg0", "xdpdrv", "obj", str(obj), "sec", "xdp"])

    def exec_gen(self, argv):
        return ["ip", "netns", "exec", self.gen] + argv

    def exec_srv(self, argv):
        return ["ip", "netns", "exec", self.srv] + argv

    def napi_pids(self):
        """The server end's NAPI threads, made threaded again: veth makes a new NAPI
        instance when an XDP program attaches."""
        subprocess.run(self.exec_srv(["sh", "-c", "echo 0 > /sys/class/net/xs0/threaded; echo 1 > /sys/class/net/xs0/threaded"]),
                       check=True, capture_output=True)
        out = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout
        return [l.split()[0] for l in out.splitlines()[1:] if l.split()[1].startswith("napi/xs0-")]

    def close(self):
        for ns in (self.gen, self.srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def bpf_run_ns(pid):
    """Run time of the XDP programs process `pid` holds (kernel.bpf_stats_enabled), ns."""
    total = 0
    for f in Path(f"/proc/{pid}/fdinfo").glob("*"):
        try:
            text = f.read_text()
        except OSError:
            continue
        if "prog_type:\t6" in text:
            for line in text.splitlines():
                if line.startswith("run_time_ns:"):
                    total += int(line.split()[1])
    return total


def bench_xdp(a, tmp):
    """The XDP fast path (issue 23.3): coturn, firstcall and firstcall --xdp, each in the
    server namespace of a VethPair, under the same call-shaped load from the generator's.
    CPU: the server process plus the server end's NAPI threads (where the program runs),
    the whole machine for context, and the program's own run time from the kernel's BPF
    statistics."""
    objs = sorted(REL.glob("build/firstcall-server-*/out/relay.bpf.o"), key=lambda p: p.stat().st_mtime)
    if not objs:
        raise RuntimeError("no relay.bpf.o: firstcall was built without clang (scripts/install-deps installs it)")
    loads = [(10, False, "direct"), (10, False, "relayed")] if a.quick else \
        [(500, False, "direct"), (500, False, "relayed"), (300, True, "direct"), (300, True, "relayed")]
    dur = 1000 if a.quick else 6000
    stats_flag = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_flag.read_text().strip()
    stats_flag.write_text("1")
    rows = []
    try:
        for name in ["firstcall-xdp", "firstcall", "coturn"]:
            if not have_server(name.split("-")[0]):
                continue
            for calls, video, peers in loads:
                v = VethPair(objs[-1])
                try:
                    if name == "coturn":
                        argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls",
                                "--listening-ip", "198.18.1.2", "--relay-ip", "198.18.1.2", "--listening-port", "3478",
                                "--min-port", "45000", "--max-port", "65000", "--use-auth-secret",
                                "--static-auth-secret", SECRET, "--realm", REALM, "--relay-threads", "1",
                                "--total-quota", "0", "--user-quota", "0", "--allow-loopback-peers",
                                "--log-file", str(tmp / "coturn-xdp.log"), "--simple-log", "--no-stdout-log",
                                "--pidfile", str(tmp / "coturn-xdp.pid")]
                    else:
                        argv = [str(REL / "firstcall"), "serve", "--http-listen", "198.18.1.2:8080",
                                "--turn-listen", "198.18.1.2:3478", "--relay-ports", "20000-44999",
                                "--turn-secret", SECRET, "--realm", REALM, "--threads", "1",
                                "--max-allocations", "200000", "--max-allocations-per-user", "200000",
                                "--log", "warn", "--turn-error-rate", "0", "--max-bps", "0", "--user-max-bps", "0",
                                "--allow-peer", "198.18.1.0/24", "--data-dir", str(tmp / "firstcall-xdp-data"),
                                "--jwt-secret", SECRET] + (["--xdp", "xs0"] if name == "firstcall-xdp" else [])
                    p = Proc(name, v.exec_srv(argv))
                    try:
                        def up():
                            p.check()
                            # firstcall opens HTTP once TURN (and the program) is up.
                            return listening(p.pid, 8080) if name != "coturn" else listening_udp(p.pid, 3478)
                        wait_for(up, name)
                        pids = [str(p.pid)] + v.napi_pids()
                        bpf0 = bpf_run_ns(p.pid)
                        lines = run_tool(v.exec_gen([str(REL / "firstcall-bench"), "calls", "--server", "198.18.1.2:3478",
                                                     "--kind", "turn", "--secret", SECRET, "--calls", str(calls),
                                                     "--video", "1" if video else "0", "--peers", peers,
                                                     "--duration-ms", str(dur), "--server-pid", ",".join(pids)]), 900)
                        bpf = bpf_run_ns(p.pid) - bpf0
                        p.check()
                    finally:
                        p.stop()
                finally:
                    v.close()
                res = next((l["result"] for l in lines if "result" in l), None)
                if res is not None:
                    res["bpf_ns_per_packet"] = bpf / res["received"] if res.get("received") else 0
                rows.append({"server": name, "calls": calls, "video": video, "peers": peers, "result": res})
                log(f"xdp {name} {calls}{' +video' if video else ''} {peers}: {res}")
    finally:
        stats_flag.write_text(old_stats)
    return rows


def listening_udp(pid, port):
    """A UDP socket bound to `port` in the network namespace of `pid`."""
    try:
        for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
            if int(line.split()[1].split(":")[1], 16) == port:
                return True
    except OSError:
        pass
    return False


def bench_control(a, tmp):
    count = 300 if a.quick else 10000
    rows = []
    for name in ["firstcall", "coturn"]:
        if not have_server(name):
            continue
        p, addr, _ = SERVERS[name](a.threads, tmp)
        try:
            lines = run_tool([str(REL / "firstcall-bench"), "control", "--server", addr, "--secret", SECRET,
                              "--count", str(count), "--concurrency", "32", "--server-pid", str(p.pid)], 900)
            p.check()
        finally:
            p.stop()
        res = next(l["result"] for l in lines if "result" in l)
        rows.append({"server": name, "result": res})
        log(f"control {name}: {res}")
    return rows


# ---------------------------------------------------------------- signaling

SPREED = "/usr/bin/nextcloud-spreed-signaling-server"
SPREED_CLIENT = "/usr/bin/nextcloud-spreed-signaling-client"


class SigNetns:
    """A network namespace of our own for the signaling bench: spreed's load client
    serves its fake backend on the first non-loopback address it sees, so it gets a
    veth with a documentation address (198.18.0.1) that leads nowhere. Everything else
    talks over this namespace's loopback."""

    def __init__(self):
        self.name = f"fcbench-{os.getpid()}"
        self.run(["ip", "netns", "add", self.name])
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["addr", "add", "198.18.0.1/24", "dev", "v0"],
                    ["link", "set", "v0", "up"], ["link", "set", "v1", "up"]):
            self.run(["ip", "-n", self.name] + cmd)
        # 50,000 sessions from one generator: widen the ephemeral range (this namespace only).
        self.run(self.exec(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000"]))

    def exec(self, argv):
        return ["ip", "netns", "exec", self.name] + argv

    @staticmethod
    def run(argv):
        subprocess.run(argv, check=True, capture_output=True)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def listening(pid, port):
    """A TCP socket in LISTEN on `port` in the network namespace of `pid`."""
    try:
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
                return True
    except OSError:
        pass
    return False


def pinned():
    """Whether `pin` gives the servers and the generator cores of their own."""
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pin(role, argv):
    """Signaling server and generator each get a core of their own (servers on CPU 1, the
    generator and spreed's own client on CPU 0), so that neither measures the other: on a
    shared pair of cores the peak saturated both and "half of peak" still measured a full
    machine. No pinning on a single core or without taskset."""
    if not pinned():
        return argv
    return ["taskset", "-c", "1" if role == "server" else "0"] + argv


def start_sig_firstcall(ns, tmp, port=18080, redis_url=None, n=0):
    """firstcall for the signaling benches: alone, or node `n` of a cluster on `redis_url`."""
    name = f"firstcall node {n}" if redis_url else "firstcall (signaling)"
    p = Proc(f"firstcall-node{n}" if redis_url else "firstcall-sig", ns.exec(pin("server", [
        str(REL / "firstcall"), "serve", "--http-listen", f"127.0.0.1:{port}",
        "--turn-listen", f"127.0.0.1:{13478 + n}", "--turn-secret", SECRET, "--log", "warn",
        # dev:<user> tokens; every session comes from this one address, up to 50,000.
        "--dev", "--max-connections-per-ip", "0", "--max-connections", "1000000",
        *(["--redis-url", redis_url] if redis_url else []),
        "--data-dir", str(tmp / (f"firstcall-node{n}-data" if redis_url else "firstcall-sig-data"))])))
    wait_for(lambda: p.check() and listening(p.pid, port), name)
    return p, f"127.0.0.1:{port}"


def spreed_config(tmp, port):
    conf = tmp / "spreed.conf"
    conf.write_text(f"""[http]
listen = 127.0.0.1:{port}
[app]
debug = false
[sessions]
hashkey = {os.urandom(16).hex()}
blockkey = {os.urandom(8).hex()}
[clients]
internalsecret = bench-internal
[backend]
# Any backend URL: the benchmark's fake Nextcloud answers every hello.
allowall = true
secret = {SECRET}
timeout = 10
connectionsperhost = 64
[nats]
# In-process message bus (this version's spelling); no NATS server.
url = :loopback:
[mcu]
[turn]
""")
    return conf


def start_sig_spreed(ns, tmp):
    port = 18081
    conf = spreed_config(tmp, port)
    p = Proc("spreed", ns.exec(pin("server", [SPREED, "-config", str(conf)])))
    wait_for(lambda: p.check() and listening(p.pid, port), "nextcloud-spreed-signaling")
    return p, f"127.0.0.1:{port}", conf


def spreed_own_client(ns, conf, addr, clients, seconds):
    """spreed's own load client: every client sends to a random other client, pausing
    1 ms between frames; it prints totals every 10 s. Returns the last report."""
    out = subprocess.run(ns.exec(pin("generator", ["timeout", "-s", "INT", str(seconds), SPREED_CLIENT, "-config", str(conf),
                                  "-addr", addr, "-maxClients", str(clients)])),
                         capture_output=True, text=True, timeout=seconds + 30)
    import re
    reports = re.findall(r"Stats: sent=(\d+) \((\d+)/sec\), recv=(\d+) \((\d+)/sec\)", out.stdout + out.stderr)
    if not reports:
        raise RuntimeError("spreed client printed no stats:\n" + (out.stdout + out.stderr)[-2000:])
    sent, sps, recv, rps = map(int, reports[-1])
    return {"clients": clients, "sent_per_s": sps, "received_per_s": rps}


def bench_signal(a, tmp):
    pairs = 50 if a.quick else 1000
    rates = ["--start", "500", "--max", "2000", "--duration-ms", "300"] if a.quick else \
        ["--start", "10000", "--max", "2000000", "--duration-ms", "2000"]
    # Each session is a socket in the server and one in the generator: the open-files
    # limit caps the count (a container may not let even root raise it).
    cap = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1000
    counts = [300] if a.quick else sorted({min(n, cap) for n in (10000, 50000)})
    if not a.quick and cap < 50000:
        log(f"signal: open-files limit {cap + 1000} caps idle sessions at {cap} (50,000 asked)")
    counts = ",".join(map(str, counts))
    servers = ["firstcall"] + (["spreed"] if have_server("spreed") else [])
    rows = []
    ns = SigNetns()
    try:
        for name in servers:
            row = {"server": name}
            for what in ["throughput", "idle"]:
                if name == "firstcall":
                    p, addr = start_sig_firstcall(ns, tmp)
                else:
                    p, addr, conf = start_sig_spreed(ns, tmp)
                try:
                    if what == "throughput":
                        lines = run_tool(ns.exec(pin("generator", [str(REL / "firstcall-bench"), "signal", "--server", addr,
                                                  "--proto", name, "--pairs", str(pairs),
                                                  "--server-pid", str(p.pid),
                                                  # A polling generator sharing the server's
                                                  # core would take its CPU.
                                                  "--poll", "1" if pinned() else "0"] + rates)), 900)
                        row["result"] = check_delivered(name, next(l["result"] for l in lines if "result" in l))
                        row["steps"] = [l for l in lines if l.get("step")]
                    else:
                        lines = run_tool(ns.exec(pin("generator", [str(REL / "firstcall-bench"), "signal-idle", "--server",
                                                  addr, "--proto", name, "--counts", counts,
                                                  "--server-pid", str(p.pid)])), 900)
                        idle = next(l["result"] for l in lines if "result" in l)
                        row["idle"] = idle["points"]
                        if idle.get("error"):
                            row["idle_error"] = idle["error"]
                            log(f"signal {name} idle: {idle['error']}")
                    p.check()
                finally:
                    p.stop()
            if name == "spreed" and not a.quick:
                p, addr, conf = start_sig_spreed(ns, tmp)
                try:
                    row["own_client"] = spreed_own_client(ns, conf, addr, 100, 22)
                    p.check()
                finally:
                    p.stop()
            log(f"signal {name}: {row.get('result')} idle {row.get('idle')} own client {row.get('own_client')}")
            rows.append(row)
    finally:
        ns.close()
    return rows


def bench_callsetup(a, tmp):
    """Two Chromium pages on one host, repeated calls (bench/callsetup.mjs)."""
    n = 3 if a.quick else 20
    env = dict(os.environ, FIRSTCALL_BIN=str(REL / "firstcall"))
    log(f"callsetup: {n} calls between two Chromium pages")
    out = subprocess.run(["node", str(ROOT / "bench" / "callsetup.mjs"), "--calls", str(n)],
                         capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"callsetup failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res = next(json.loads(l)["result"] for l in out.stdout.splitlines() if l.startswith('{"result"'))
    log(f"callsetup: p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, first {res['first_call_ms']} ms")
    return [{"server": "firstcall", "result": res}]


def have_server(name):
    if name == "spreed" and not Path(SPREED).exists():
        if os.environ.get("CI"):
            raise RuntimeError("nextcloud-spreed-signaling missing (scripts/install-deps installs it)")
        log("SKIP spreed: nextcloud-spreed-signaling not installed")
        return False

    if name == "coturn" and not shutil.which("turnserver"):
        if os.environ.get("CI"):
            raise RuntimeError("coturn missing (scripts/install-deps installs it)")
        log("SKIP coturn: turnserver not installed")
        return False
    return True

REDIS = "redis-server"
NATS = "nats-server"


def start_redis(ns, tmp):
    """A Redis of its own for one configuration: an empty directory each time (the
    configuration before's log, loaded from its append-only file, would be another
    cluster's state, and Redis answers LOADING while it reads it)."""
    port = 16379
    d = Path(tempfile.mkdtemp(prefix="redis-", dir=tmp))
    # appendfsync everysec: the persistence docs/operations.md asks for in production.
    p = Proc("redis", ns.exec(pin("server", [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(d)])))
    wait_for(lambda: p.check() and listening(p.pid, port), "redis-server")
    return p, f"redis://127.0.0.1:{port}/0"


def start_nats(ns):
    port = 14222
    p = Proc("nats", ns.exec(pin("server", [NATS, "-a", "127.0.0.1", "-p", str(port)])))
    wait_for(lambda: p.check() and listening(p.pid, port), "nats-server")
    return p, f"nats://127.0.0.1:{port}"


def start_spreed_node(ns, tmp, port, nats_url, keys, n):
    conf = spreed_config(tmp, port)
    text = conf.read_text().replace("url = :loopback:", f"url = {nats_url}")
    # Every node of a cluster shares the session keys (they sign the session ids).
    text = re.sub(r"hashkey = \w+", f"hashkey = {keys[0]}", text)
    text = re.sub(r"blockkey = \w+", f"blockkey = {keys[1]}", text)
    conf = tmp / f"spreed-node{n}.conf"
    conf.write_text(text)
    p = Proc(f"spreed-node{n}", ns.exec(pin("server", [SPREED, "-config", str(conf)])))
    wait_for(lambda: p.check() and listening(p.pid, port), f"nextcloud-spreed-signaling node {n}")
    return p, f"127.0.0.1:{port}", conf


def check_delivered(name, result):
    """A signaling result whose half-peak runs delivered a frame to another session than
    its recipient is refused: its latencies would measure the wrong path (the peak
    search already fails a step with one)."""
    half = result.get("half_peak") or {}
    if half.get("misdelivered"):
        raise RuntimeError(f"{name}: {half['misdelivered']} frames reached another session than their recipient")
    return result


def bench_cluster(a, tmp):
    """Signaling across nodes (issue 18): the same generator and load as `signal`, each
    pair's second session on the last node. firstcall in-process; on Redis with 1 and 2
    nodes; nextcloud-spreed-signaling on 2 nodes over Debian's nats-server. Server CPU sums
    every node; the store's (Redis, NATS) is counted apart and reported beside it. Every
    process of a configuration is pinned to the servers' core."""
    pairs = 50 if a.quick else 500
    rates = ["--start", "500", "--max", "2000", "--duration-ms", "300"] if a.quick else \
        ["--start", "2000", "--max", "2000000", "--duration-ms", "2000"]
    have = {name: shutil.which(b) is not None for name, b in (("redis", REDIS), ("nats", NATS))}
    for name, ok in have.items():
        if not ok:
            if os.environ.get("CI"):
                raise RuntimeError(f"{name} missing (scripts/install-deps installs it)")
            log(f"SKIP {name}: not installed")
    configs = ["firstcall", "firstcall-redis-1", "firstcall-redis-2", "spreed-nats-2"]
    configs = [c for c in configs if not ((c.startswith("firstcall-redis") and not have["redis"])
                                         or (c.startswith("spreed") and (not have["nats"] or not have_server("spreed"))))]
    rows = []
    ns = SigNetns()
    try:
        for name in configs:
            procs, store = [], None
            try:
                if name == "firstcall":
                    p, addr = start_sig_firstcall(ns, tmp)
                    procs, servers, proto = [p], [addr], "firstcall"
                elif name.startswith("firstcall-redis"):
                    store, url = start_redis(ns, tmp)
                    n = int(name[-1])
                    started = [start_sig_firstcall(ns, tmp, 18090 + i, url, i) for i in range(n)]
                    procs, servers, proto = [p for p, _ in started], [addr for _, addr in started], "firstcall"
                else:
                    store, url = start_nats(ns)
                    keys = (os.urandom(16).hex(), os.urandom(8).hex())
                    started = [start_spreed_node(ns, tmp, 18100 + i, url, keys, i) for i in range(2)]
                    procs, servers, proto = [p for p, _, _ in started], [addr for _, addr, _ in started], "spreed"
                argv = [str(REL / "firstcall-bench"), "signal", "--server", servers[0], "--proto", proto,
                        "--pairs", str(pairs), "--server-pid", ",".join(str(p.pid) for p in procs),
                        "--poll", "1" if pinned() else "0"] + rates
                if len(servers) > 1:
                    argv += ["--server2", servers[-1]]
                if store:
                    argv += ["--store-pid", str(store.pid)]
                lines = run_tool(ns.exec(pin("generator", argv)), 900)
                row = {"server": name, "nodes": len(servers), "result": check_delivered(name, next(l["result"] for l in lines if "result" in l)),
                       "steps": [l for l in lines if l.get("step")]}
                for p in procs + ([store] if store else []):
                    p.check()
                log(f"cluster {name}: {row['result'].get('peak')}")
                rows.append(row)
            finally:
                for p in procs + ([store] if store else []):
                    p.stop()
    finally:
        ns.close()
    return rows


BENCHES = {"calls": bench_calls, "xdp": bench_xdp, "relay": bench_relay, "control": bench_control, "signal": bench_signal, "cluster": bench_cluster,
           "callsetup": bench_callsetup}


# ---------------------------------------------------------------- report

def ratio(x, y):
    return round(x / y, 2) if x and y else None


def summarise(results):
    s = {}
    relay = results.get("relay") or []
    by = {(r["server"], r["size"], r["flows"]): r["result"] for r in relay}
    for (srv, size, n), res in by.items():
        if srv != "firstcall" or not res:
            continue
        c, b = by.get(("coturn", size, n)), by.get(("bare", size, n))
        s[f"relay_{size}B_x{n}"] = {
            "firstcall_pps": res["rate"],
            "vs_coturn": ratio(res["rate"], c and c["rate"]),
            "vs_bare": ratio(res["rate"], b and b["rate"]),
            "cpu_per_million_vs_coturn": ratio(res["cpu_s_per_million"], c and c["cpu_s_per_million"]),
        }
    calls = results.get("calls") or []
    cby = {(r["server"], r["calls"], r["video"], r.get("peers", "relayed")): r["result"] for r in calls}
    for (srv, n, video, peers), res in cby.items():
        if srv != "firstcall" or not res:
            continue
        c, b = cby.get(("coturn", n, video, peers)), cby.get(("bare", n, video, peers))
        s[f"calls_{n}{'_video' if video else '_audio'}_{peers}"] = {
            "firstcall_cpu_s_per_million": round(res["cpu_s_per_million"], 2),
            "coturn_over_firstcall_cpu": ratio(c and c["cpu_s_per_million"], res["cpu_s_per_million"]),
            "bare_over_firstcall_cpu": ratio(b and b["cpu_s_per_million"], res["cpu_s_per_million"]),
            # A generator that spends its whole core sending measures its own queues.
            "firstcall_p99_us": res.get("p99_us") if res.get("generator_cpu_share", 0) < 0.9 else None,
            "firstcall_loss": res.get("loss"),
        }
    xr = results.get("xdp") or []
    xby = {(r["server"], r["calls"], r["video"], r["peers"]): r["result"] for r in xr}
    for (srv, n, video, peers), res in xby.items():
        if srv != "firstcall-xdp" or not res:
            continue
        c, f = xby.get(("coturn", n, video, peers)), xby.get(("firstcall", n, video, peers))
        # The server process plus its end's NAPI threads, where the program runs (threaded
        # NAPI, TSO off on both ends: see VethPair).
        key = "cpu_s_per_million"
        s[f"xdp_{n}{'_video' if video else '_audio'}_{peers}"] = {
            "xdp_cpu_s_per_million": round(res.get(key, 0), 2),
            "coturn_over_xdp": ratio(c and c.get(key), res.get(key)),
            "firstcall_over_xdp": ratio(f and f.get(key), res.get(key)),
        }
    ctl = {r["server"]: r["result"] for r in results.get("control") or []}
    if "firstcall" in ctl:
        f, c = ctl["firstcall"], ctl.get("coturn")
        s["control"] = {
            "firstcall_allocations_per_s": round(f["per_second"]),
            "vs_coturn": ratio(f["per_second"], c and c["per_second"]),
            "firstcall_bytes_per_allocation": round(f["bytes_per_allocation"]),
            "coturn_bytes_per_allocation": c and round(c["bytes_per_allocation"]),
        }
    sig = {r["server"]: r for r in results.get("signal") or []}
    if "firstcall" in sig:
        f, sp = sig["firstcall"], sig.get("spreed")
        fp = (f.get("result") or {}).get("peak") or {}
        spp = ((sp or {}).get("result") or {}).get("peak") or {}
        half = (f.get("result") or {}).get("half_peak") or {}
        s["signal"] = {
            "firstcall_frames_per_s": fp.get("frames_per_second") and round(fp["frames_per_second"]),
            "spreed_frames_per_s": spp.get("frames_per_second") and round(spp["frames_per_second"]),
            "vs_spreed": ratio(fp.get("frames_per_second"), spp.get("frames_per_second")),
            "cpu_per_million_vs_spreed": ratio(fp.get("server_cpu_s_per_million"), spp.get("server_cpu_s_per_million")),
            "firstcall_p99_ms_half_peak": half.get("p99_ms"),
            "firstcall_bytes_per_idle_session": {str(x["sessions"]): round(x["bytes_per_session"]) for x in f.get("idle") or []},
            "spreed_bytes_per_idle_session": {str(x["sessions"]): round(x["bytes_per_session"]) for x in (sp or {}).get("idle") or []},
        }
    return s


TARGETS = [
    ("call-shaped relay, both parties relayed: coturn CPU / firstcall CPU per packet", ">= 2x", lambda s: [v["coturn_over_firstcall_cpu"] for k, v in s.items() if k.startswith("calls_") and k.endswith("_relayed")], lambda v: v >= 2),
    ("call-shaped relay, one party relayed: coturn CPU / firstcall CPU per packet", ">= 2x", lambda s: [v["coturn_over_firstcall_cpu"] for k, v in s.items() if k.startswith("calls_") and k.endswith("_direct")], lambda v: v >= 2),
    ("call-shaped relay, one party relayed: firstcall CPU / bare forwarder CPU", "<= 1.2x", lambda s: [ratio(1, v["bare_over_firstcall_cpu"]) for k, v in s.items() if k.startswith("calls_") and k.endswith("_direct") and v.get("bare_over_firstcall_cpu")], lambda v: v <= 1.2),
    ("call-shaped relay: firstcall p99 through the relay, µs (to the kernel's receive stamp; loads the generator can offer, its CPU share < 0.9)", "< 1000", lambda s: [v.get("firstcall_p99_us") for k, v in s.items() if k.startswith("calls_")], lambda v: v < 1000),
    ("call-shaped relay: firstcall loss", "0", lambda s: [v.get("firstcall_loss") for k, v in s.items() if k.startswith("calls_")], lambda v: v == 0),
    ("kernel fast path: coturn CPU / firstcall --xdp CPU per packet (server process + its NAPI threads, veth)", ">= 5x", lambda s: [v["coturn_over_xdp"] for k, v in s.items() if k.startswith("xdp_")], lambda v: v >= 5),
    ("relay vs coturn (packets/s)", ">= 1.5x", lambda s: [v["vs_coturn"] for k, v in s.items() if k.startswith("relay_")], lambda v: v >= 1.5),
    ("relay vs bare forwarder", ">= 0.7x", lambda s: [v["vs_bare"] for k, v in s.items() if k.startswith("relay_")], lambda v: v >= 0.7),
    ("allocations/s vs coturn", ">= 2x", lambda s: [s.get("control", {}).get("vs_coturn")], lambda v: v >= 2),
    ("bytes per live allocation", "< 2048", lambda s: [s.get("control", {}).get("firstcall_bytes_per_allocation")], lambda v: v < 2048),
    ("signaling frames/s vs spreed", ">= 3x", lambda s: [s.get("signal", {}).get("vs_spreed")], lambda v: v >= 3),
    ("signaling p99 at half of peak (ms, generator polling)", "< 5", lambda s: [s.get("signal", {}).get("firstcall_p99_ms_half_peak")], lambda v: v < 5),
    ("bytes per idle session", "< 16384", lambda s: list(s.get("signal", {}).get("firstcall_bytes_per_idle_session", {}).values()), lambda v: v < 16384),
]


def low_latency_rate(r, p99_ms=5.0):
    """Highest offered rate among passing steps whose p99 stayed under `p99_ms`: the
    latency the peak's half cannot show when the peak itself saturates the machine."""
    rates = [st["rate"] for st in r.get("steps") or [] if st.get("ok") and st.get("p99_ms", 1e9) < p99_ms]
    return max(rates) if rates else None


def markdown(doc):
    m = [f"# Benchmarks ({'quick' if doc['quick'] else 'full'} run, {doc['date']})", "",
         f"Machine: {doc['machine']['cpus']} CPUs, {doc['machine']['cpu_model']}; server threads: {doc['threads']}. "
         "All servers on 127.0.0.1, started by `bench/run`, measured by the same generator.", ""]
    # Benchmarks kept from an earlier run (`--only`) carry their own date and machine.
    kept = {k: v[0] for k, v in doc["results"].items() if v and v[0].get("date")}
    if kept:
        def when(k):
            r = kept.get(k) or {}
            mach = r.get("machine") or doc["machine"]
            return f"{k} {r.get('date') or doc['date']} ({mach['cpu_model']})"
        m += ["Runs: " + "; ".join(when(k) for k in doc["results"]) + ". Every ratio compares servers measured "
              "in the same run on the same machine.", ""]
    s = doc["summary"]
    m += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for name, goal, get, ok in TARGETS:
        vals = [v for v in get(s) if v is not None]
        if not vals:
            m.append(f"| {name} | {goal} | not measured | - |")
            continue
        met = all(ok(v) for v in vals)
        m.append(f"| {name} | {goal} | {', '.join(str(v) for v in vals)} | {'yes' if met else '**no**'} |")
    calls = doc["results"].get("calls")
    if calls:
        m += ["", "## TURN relay on call-shaped traffic (the figures to quote)", "",
              "N calls: `relayed`, both parties relayed by the server (two allocations; each packet crosses the "
              "server twice, which firstcall hands over in-process when both allocations sit on one worker); "
              "`direct`, one party relayed and the other a plain UDP peer (each packet crosses once), and the bare "
              "forwarder's two one-way routes per call (once). Audio both ways (50 "
              "packets/s of 120-200 B each way) and, with video, 30 frames/s each way of 1-8 packets of 1,100 B "
              "leaving 2 per ms; start times jittered; one datagram per syscall, as each client sends its own. "
              "Every server gets the same load (fixed, not searched). CPU is the server's (user+system) per "
              "million packets received at the far ends. Latency runs from the sender's `send` to the kernel's "
              "receive timestamp on the receiving socket (`SO_TIMESTAMPNS`), one machine's clock: the time through "
              "the relay, without the generator's own wait before it reads (one thread sends and receives); "
              "`as read` counts that wait too (the figure before 2026-12-04).", "",
              "| calls | peers | server | packets/s | Mbit/s | loss | CPU share | CPU s / Mpkt | p50 µs | p99 µs | as read p50 / p99 µs | generator CPU share |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in calls:
            x = r["result"] or {}
            m.append(f"| {r['calls']}{' audio+video' if r['video'] else ' audio'} | {r.get('peers', 'relayed')} | {r['server']} | "
                     f"{x.get('offered_pps', 0):.0f} | {x.get('mbit_s', 0):.1f} | {x.get('loss', 0):.4f} | "
                     f"{x.get('server_cpu_share', 0):.2f} | {x.get('cpu_s_per_million', 0):.2f} | "
                     f"{x.get('p50_us', 0)} | {x.get('p99_us', 0)} | {x.get('read_p50_us', '–')} / {x.get('read_p99_us', '–')} | "
                     f"{x.get('generator_cpu_share', 0):.2f} |")
    xdp = doc["results"].get("xdp")
    if xdp:
        m += ["", "## TURN relay with the XDP fast path (`--xdp`, a veth between two namespaces)", "",
              "The same call-shaped load from a generator namespace to a server namespace over one veth, for coturn, "
              "firstcall and firstcall with its XDP program on the server's end of the veth (no bandwidth limits, so "
              "every channel is in the program's maps). Both ends of the veth run their NAPI in kernel threads "
              "(`threaded`, GRO on, TSO off, so every frame goes through NAPI rather than a backlog drained in the "
              "sender's context): the server's whole cost is its process plus its end's NAPI thread, where the "
              "XDP program runs (`server+NAPI`, the figure compared). `machine` is the whole machine's busy CPU and "
              "`others` that less the generator's process, per million packets, for context. `XDP ns/pkt` is the "
              "program's own run time from the kernel's BPF statistics. On a veth the NAPI thread also pays for "
              "the harness: freeing the generator's socket buffers, copying each skb into an XDP buffer and waking "
              "the generator end's NAPI, which a NIC's native XDP does not do (docs/operations.md has the profile).", "",
              "| calls | peers | server | packets/s | loss | server+NAPI CPU s / Mpkt | machine CPU s / Mpkt | others CPU s / Mpkt | XDP ns/pkt | p50 µs | p99 µs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in xdp:
            x = r["result"] or {}
            m.append(f"| {r['calls']}{' audio+video' if r['video'] else ' audio'} | {r['peers']} | {r['server']} | "
                     f"{x.get('offered_pps', 0):.0f} | {x.get('loss', 0):.4f} | {x.get('cpu_s_per_million', 0):.2f} | "
                     f"{x.get('machine_cpu_s_per_million', 0):.2f} | {x.get('machine_minus_generator_s_per_million', 0):.2f} | "
                     f"{x.get('bpf_ns_per_packet', 0):.0f} | {x.get('p50_us', 0)} | {x.get('p99_us', 0)} |")
    relay = doc["results"].get("relay")
    if relay:
        m += ["", "## TURN relay, burst load (ChannelData over UDP, two relay hops per packet)", "",
              "Each flow's share of a 1 ms tick leaves in one burst to one destination, which no real client does "
              "(libwebrtc paces): GRO/GSO merge such bursts, so these figures flatter batching. Kept beside the "
              "call-shaped ones above, which are the ones to quote.", "",
              "Highest offered rate with under 1% loss; CPU is the server's (user+system) per million packets relayed.", "",
              "| payload | flows | server | packets/s | Mbit/s | CPU s / Mpkt |", "|---|---|---|---|---|---|"]
        for r in relay:
            res = r["result"] or {}
            m.append(f"| {r['size']} B | {r['flows']} | {r['server']} | {res.get('rate', 'none')} | "
                     f"{res.get('mbit_s', 0):.0f} | {res.get('cpu_s_per_million', 0):.2f} |")
    ctl = doc["results"].get("control")
    if ctl:
        m += ["", "## TURN control plane", "",
              "Allocate (401 challenge + authenticated) + CreatePermission + ChannelBind per allocation, 32 in flight; "
              "memory is the server's RSS growth divided by live allocations. Server CPU per allocation (all its "
              "threads) is the figure that does not depend on the generator; a generator CPU share near 1.0 means the "
              "generator, not the server, set the rate.", "",
              "| server | allocations | failures | allocations/s | server CPU µs / allocation | generator CPU share | bytes per allocation |",
              "|---|---|---|---|---|---|---|"]
        for r in ctl:
            x = r["result"]
            m.append(f"| {r['server']} | {x['allocations']} | {x['failures']} | {x['per_second']:.0f} | "
                     f"{x.get('server_cpu_us_per_allocation', 0):.0f} | {x.get('generator_cpu_share', 0):.2f} | "
                     f"{x['bytes_per_allocation']:.0f} |")
    sig = doc["results"].get("signal")
    if sig:
        m += ["", "## Signaling", "",
              "Frames relayed between pairs of sessions (firstcall: `call.signal` inside a call; spreed: `message` to a "
              "session), open loop, the same generator for both. Peak: highest offered rate with 99% delivered within 1 s, "
              "p99 under 250 ms and no errors; a failed step is run once more before it counts as failed (both servers; "
              "every try is in latest.json), since a host stall now and then fails a step that the same rate then passes. "
              "Idle memory: the server's RSS growth divided by open sessions. Latency runs from the sender's `send` to the "
              "kernel's receive timestamp at the recipient's socket (`SO_TIMESTAMPNS`): how long the bytes then wait for "
              "the generator's one thread is the generator's queueing, not the server's. The column 'as read' is the same "
              "runs up to when the generator read the frame (the figure before receive timestamps).", "",
              "| server | peak frames/s | p99 at peak (ms) | p50 / p99 at half peak (ms, median of 3 runs, generator polling) | p50 / p99 at half peak, as read | same, generator sleeping | highest rate with p99 under 5 ms | server CPU s / M frames | bytes per idle session |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in sig:
            res = r.get("result") or {}
            pk, hf = res.get("peak") or {}, res.get("half_peak") or {}
            idle = ", ".join(f"{x['bytes_per_session']:.0f} at {x['sessions']}" for x in r.get("idle") or [])
            fast = low_latency_rate(r)
            m.append(f"| {r['server']} | {pk.get('frames_per_second', 0):.0f} | {pk.get('p99_ms', 0):.1f} | "
                     f"{half_cell(hf)} | {half_cell(app_half(hf))} | {half_cell(hf.get('generator_sleeping'))} | "
                     f"{fast or 'none measured'} | "
                     f"{pk.get('server_cpu_s_per_million', 0):.1f} | {idle} |")
        own = [r for r in sig if r.get("own_client")]
        for r in own:
            o = r["own_client"]
            m += ["", f"spreed's own load client (`nextcloud-spreed-signaling-client -maxClients {o['clients']}`, "
                  f"closed loop, 1 ms pause per client): {o['received_per_s']} frames/s received."]
    cl = doc["results"].get("cluster")
    if cl:
        m += ["", "## Signaling across nodes (issue 18)", "",
              "The `signal` load (same generator, same pacing and peak search), each pair's second session on the "
              "last node: with two nodes every frame crosses from one node to the other. firstcall in-process; on "
              "Redis (`appendonly yes`, `appendfsync everysec`) with one node and with two; nextcloud-spreed-signaling "
              "on two nodes over Debian's `nats-server`. Every server process and the store run on the servers' core, "
              "the generator on the other. Server CPU sums the nodes; the store's CPU is counted apart. Frames per "
              "CPU-second: delivered frames over server plus store CPU, at the peak step.", "",
              "| configuration | nodes | peak frames/s | p50 / p99 at half peak (ms) | server CPU s / M frames | store CPU s / M frames | frames per CPU-second |",
              "|---|---|---|---|---|---|---|"]
        eff = {}
        for r in cl:
            res = r.get("result") or {}
            pk, hf = res.get("peak") or {}, res.get("half_peak") or {}
            srv, st = pk.get("server_cpu_s_per_million") or 0, pk.get("store_cpu_s_per_million") or 0
            eff[r["server"]] = 1e6 / (srv + st) if srv + st else None
            m.append(f"| {r['server']} | {r.get('nodes', 1)} | {pk.get('frames_per_second', 0):.0f} | {half_cell(hf)} | "
                     f"{srv:.1f} | {st:.1f} | {eff[r['server']] or 0:.0f} |")
        sp = eff.get("spreed-nats-2")
        lat = {r["server"]: ((r.get("result") or {}).get("half_peak") or {}).get("p50_ms") for r in cl}
        for name in ("firstcall-redis-1", "firstcall-redis-2"):
            if eff.get(name) and sp:
                m.append(f"\n{name}: {eff[name] / sp:.2f}x spreed-with-NATS frames per CPU-second (target >= 1.5x).")
            if lat.get(name) is not None and lat.get("firstcall") is not None:
                m.append(f"{name}: p50 at half peak {lat[name]:.2f} ms vs in-process {lat['firstcall']:.2f} ms "
                         f"(+{lat[name] - lat['firstcall']:.2f} ms; target < 1 ms added).")
    cs = doc["results"].get("callsetup")
    if cs:
        r = cs[0]["result"]
        m += ["", "## Call setup (two Chromium pages on one host)", "",
              f"{r['calls']} calls, each from `client.call()` to ICE connected on the caller (getUserMedia, offer, "
              f"trickle, checks), then hung up: {r['connected_first_attempt']}/{r['calls']} connected on the first "
              f"attempt; first call {r['first_call_ms']} ms; p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, max {r['max_ms']} ms; "
              f"pairs {', '.join(r['pairs'])}."]
    if doc.get("notes"):
        m += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(m) + "\n"


def app_half(hf):
    """The half-peak runs' latencies up to when the generator read each frame."""
    if not hf or "app_p99_ms" not in hf:
        return None
    return {"p50_ms": hf["app_p50_ms"], "p99_ms": hf["app_p99_ms"], "p99_ms_runs": hf.get("app_p99_ms_runs")}


def half_cell(hf):
    """p50 / p99 at half of peak, with each run's p99."""
    if not hf:
        return "not measured"
    runs = hf.get("p99_ms_runs")
    return (f"{hf.get('p50_ms', 0):.2f} / {hf.get('p99_ms', 0):.2f}"
            + (" (runs: " + ", ".join(f"{x:.1f}" for x in runs) + ")" if runs else "")
            + (" (not pinned: generator sleeping)" if hf.get("generator_polling") is False else ""))


def plots(doc, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    relay = doc["results"].get("relay")
    if relay:
        configs = sorted({(r["size"], r["flows"]) for r in relay})
        servers = [s for s in ["firstcall", "coturn", "bare"] if any(r["server"] == s for r in relay)]
        fig, ax = plt.subplots(figsize=(8, 4))
        w = 0.8 / len(servers)
        for i, srv in enumerate(servers):
            vals = []
            for c in configs:
                r = next((r for r in relay if r["server"] == srv and (r["size"], r["flows"]) == c), None)
                vals.append(((r or {}).get("result") or {}).get("rate", 0) / 1000)
            ax.bar([j + i * w for j in range(len(configs))], vals, w, label=srv)
        ax.set_xticks([j + w * (len(servers) - 1) / 2 for j in range(len(configs))])
        ax.set_xticklabels([f"{s} B x{n}" for s, n in configs])
        ax.set_ylabel("kpackets/s relayed (<1% loss)")
        ax.set_title("TURN relay throughput")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "relay.png", dpi=100)
        plt.close(fig)
    ctl = doc["results"].get("control")
    if ctl:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.5))
        names = [r["server"] for r in ctl]
        a1.bar(names, [r["result"]["per_second"] for r in ctl], color=["C0", "C1"][: len(names)])
        a1.set_title("allocations/s")
        a2.bar(names, [r["result"]["bytes_per_allocation"] for r in ctl], color=["C0", "C1"][: len(names)])
        a2.set_title("bytes per live allocation")
        fig.tight_layout()
        fig.savefig(out / "control.png", dpi=100)
        plt.close(fig)


def plot_signal(doc, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sig = doc["results"].get("signal")
    if not sig:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for r in sig:
        steps = sorted(r.get("steps") or [], key=lambda x: x["rate"])
        a1.plot([x["rate"] / 1000 for x in steps], [x["p99_ms"] for x in steps], "o-", label=r["server"])
        idle = r.get("idle") or []
        a2.plot([x["sessions"] for x in idle], [x["bytes_per_session"] / 1024 for x in idle], "o-", label=r["server"])
    a1.set_xlabel("offered kframes/s")
    a1.set_ylabel("p99 delivery latency (ms)")
    a1.set_yscale("log")
    a1.set_title("signaling latency vs load")
    a1.legend()
    a2.set_xlabel("idle sessions")
    a2.set_ylabel("KiB per session")
    a2.set_title("memory per idle session")
    a2.legend()
    fig.tight_layout()
    fig.savefig(out / "signal.png", dpi=100)
    plt.close(fig)


def machine():
    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="check the harness works (minutes); figures mean little")
    ap.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only this benchmark (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="server threads, the same for every server")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    # 10,000 allocations hold 10,000 sockets in the server and as many in the generator.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 200_000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results, failures = {}, []
    # `--only` reruns some benchmarks and keeps the others' latest figures (marked with
    # their own date), so one table always shows every benchmark.
    prev = out / "latest.json"
    if a.only and prev.exists() and not a.quick:
        try:
            old = json.loads(prev.read_text())
            if not old.get("quick"):
                for k, v in old.get("results", {}).items():
                    if k not in a.only:
                        results[k] = v
                        for r in v:
                            r.setdefault("date", old.get("date"))
                            r.setdefault("machine", old.get("machine"))
        except (OSError, ValueError):
            pass
    with tempfile.TemporaryDirectory(prefix="firstcall-bench-") as t:
        for name in a.only or list(BENCHES):
            try:
                results[name] = BENCHES[name](a, Path(t))
            except Exception as e:  # report every benchmark, then fail
                log(f"{name} FAILED: {e}")
                failures.append(f"{name}: {e}")
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": a.quick, "threads": a.threads, "machine": machine(),
        "results": results, "summary": summarise(results), "failures": failures,
        "notes": [
            f"One server thread each (--threads {a.threads}, coturn --relay-threads {a.threads}); on a 2-core "
            "machine the generator runs on the other core, and can itself be the limit: see achieved_rate in "
            "latest.json, which falls below the offered rate when the generator cannot keep up.",
            "Signaling: both servers run with their default runtimes (tokio, GOMAXPROCS) in a network namespace "
            "of the bench's own, pinned to CPU 1 with taskset; the generator (and spreed's own client) is pinned "
            "to CPU 0, so each server has one core to itself and half of its peak is half of that core. Server "
            "CPU per million frames is the efficiency figure that does not depend on the generator. The generator "
            "acknowledges as the browser SDK does (acks ride on outgoing frames; one still pending after 50 ms goes "
            "alone). Delivery latency ends at the kernel's receive timestamp on the recipient's socket "
            "(SO_TIMESTAMPNS), so the generator's own queueing is not counted; the same runs as read by the "
            "generator are reported beside them. The half-peak runs keep the generator's thread polling; three "
            "runs with it sleeping are reported too. max_gap_ms and max_burst in latest.json say how long the "
            "generator's send loop stalled in a step and the burst it then sent.",
            f"Open-files limit for this run: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; idle-session counts "
            "are capped 1,000 below it, since every session holds a socket in the server and one in the generator.",
        ],
    }
    (out / "latest.json").write_text(json.dumps(doc, indent=1))
    (out / "latest.md").write_text(markdown(doc))
    plots(doc, out)
    plot_signal(doc, out)
    print(markdown(doc))
    if failures:
        sys.exit(1)
    # The harness works when every benchmark produced a figure for every server it ran.
    for name, rows in results.items():
        for r in rows:
            if not r.get("result") or (name == "control" and r["result"]["allocations"] == 0):
                log(f"{name} {r['server']}: no result")
                sys.exit(1)


if __name__ == "__main__":
    main()
