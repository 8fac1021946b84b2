// Start servers inside a namespace and wait for them to be ready (bounded polling of a
// real condition, never a fixed sleep). Only processes started here are stopped, by PID.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export function firstcallBin() {
  const candidates = [process.env.FIRSTCALL_BIN, join(root, "target/release/firstcall"), join(root, "target/debug/firstcall")];
  const bin = candidates.find((p) => p && existsSync(p));
  if (!bin) throw new Error("no firstcall binary: run `cargo build -p firstcall` or set FIRSTCALL_BIN");
  return bin;
}

async function waitFor(what, fn, timeoutMs, proc, logFile) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited early (${proc.exitCode}):\n${readLog(logFile)}`);
    try {
      if (await fn()) return;
    } catch {
      /* not yet */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms:\n${readLog(logFile)}`);
}

function readLog(f) {
  try {
    return readFileSync(f, "utf8").slice(-4000);
  } catch {
    return "";
  }
}

/**
 * `firstcall serve` inside `ns`, HTTP on 0.0.0.0:8080 (reachable as 127.0.0.1 and the ns address),
 * TURN on the ns address (none when `extra` holds `--no-turn`). `node` (0, 1, ...) moves
 * both to other ports, for several nodes in one namespace (HTTP 8080 + node, TURN
 * 3478 + 10 × node, relays 50000 + 200 × node).
 */
/**
 * `tlsCa`: the server runs with --http-tls; readiness is checked over https trusting this
 * certificate, and `origin`/`ws` are https:// and wss:// on the namespace's address.
 */
export async function startFirstcall(ns, extra = [], { node = 0, tlsCa = null } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "firstcall-web-"));
  const logFile = join(dir, "server.log");
  const http = 8080 + node;
  const relay = 50000 + 200 * node;
  const turn = extra.includes("--no-turn") ? [] : [
    "--turn-listen", `${ns.addr}:${3478 + 10 * node}`,
    "--relay-ports", `${relay}-${relay + 199}`,
    "--realm", "firstcall.test",
  ];
  const argv = ns.exec([
    firstcallBin(), "serve",
    "--http-listen", `0.0.0.0:${http}`,
    ...turn,
    "--data-dir", join(dir, "data"),
    "--log", "debug",
    // dev:<user> tokens, unless the test chooses a JWT setting.
    ...(extra.some((a) => a.startsWith("--jwt") || a === "--dev") ? [] : ["--dev"]),
    ...extra,
  ]);
  const out = openSync(logFile, "a");
  const proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", out, out] });
  // /healthz is fetched from inside the namespace by the browser later; here we
  // check readiness through `ip netns exec` with a tiny node client.
  const base = tlsCa ? `https://${ns.addr}:${http}` : `http://127.0.0.1:${http}`;
  const probe = ns.exec([...(tlsCa ? ["env", `NODE_EXTRA_CA_CERTS=${tlsCa}`] : []), process.execPath, "-e",
    `fetch('${base}/healthz').then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))`]);
  await waitFor("firstcall", () => runOk(probe), 15000, proc, logFile);
  return {
    proc,
    logFile,
    origin: base,
    ws: `${tlsCa ? "wss" : "ws"}://${tlsCa ? ns.addr : "127.0.0.1"}:${http}/v1/ws`,
    log: () => readLog(logFile),
    stop() {
      proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
    /** Kill it and wait until it has exited (its ports are free again). */
    async stopAndWait() {
      const exited = proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve() : new Promise((r) => proc.once("exit", r));
      this.stop();
      await exited;
    },
  };
}

/** Debian's `redis-server` inside `ns` on 127.0.0.1:`port`, no persistence. */
export async function startRedis(ns, port = 6379) {
  const dir = mkdtempSync(join(tmpdir(), "firstcall-redis-"));
  const logFile = join(dir, "redis.log");
  const argv = ns.exec(["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir]);
  const out = openSync(logFile, "a");
  const proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", out, out] });
  const probe = ns.exec([process.execPath, "-e",
    `require("node:net").connect(${port}, "127.0.0.1").on("connect", () => process.exit(0)).on("error", () => process.exit(1))`]);
  await waitFor("redis-server", () => runOk(probe), 10000, proc, logFile);
  return {
    url: `redis://127.0.0.1:${port}/0`,
    stop() {
      proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * coturn (Debian's turnserver) inside `ns` on `${ns.addr}:${port}`, TURN REST credentials
 * (`use-auth-secret`) on `secret`, relays on ports `relay` ("MIN-MAX") of the ns address.
 */
export async function startCoturn(ns, { port, secret, relay, realm = "coturn.test" }) {
  const dir = mkdtempSync(join(tmpdir(), "firstcall-coturn-"));
  const logFile = join(dir, "coturn.log");
  const [min, max] = relay.split("-");
  const argv = ns.exec([
    "turnserver", "-n",
    "--listening-ip", ns.addr, "--relay-ip", ns.addr,
    "--listening-port", String(port), "--alt-listening-port", String(port + 10),
    "--min-port", min, "--max-port", max,
    "--use-auth-secret", "--static-auth-secret", secret, "--realm", realm,
    "--no-cli", "--no-tls", "--no-dtls",
    "--db", join(dir, "turndb"), "--pidfile", join(dir, "pid"),
    "--log-file", "stdout",
  ]);
  const out = openSync(logFile, "a");
  const proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", out, out] });
  // Ready once it answers a STUN Binding request on its UDP port (from inside the namespace).
  const probe = ns.exec([process.execPath, "-e", `
    const s = require("node:dgram").createSocket("udp4");
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0); req.writeUInt32BE(0x2112a442, 4); require("node:crypto").randomFillSync(req, 8, 12);
    s.on("message", (m) => process.exit(m.readUInt16BE(0) === 0x0101 ? 0 : 1));
    s.send(req, ${port}, "${ns.addr}");
    setTimeout(() => process.exit(1), 500);`]);
  await waitFor("coturn", () => runOk(probe), 10000, proc, logFile);
  return {
    proc,
    log: () => readLog(logFile),
    stop() {
      proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function runOk(argv) {
  return new Promise((res) => {
    const p = spawn(argv[0], argv.slice(1), { stdio: "ignore" });
    p.on("exit", (code) => res(code === 0));
    p.on("error", () => res(false));
  });
}
