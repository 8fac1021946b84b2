// docs/operations.md, "Several nodes on Redis", tried as a new user would: its two
// commands, taken from the page and run as written (inside a network namespace and a
// private /tmp), start Redis and two nodes; the demo page of each node signs in one
// person, and they call each other across the nodes, see each other's video and hang up.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, openSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { NetNs, requireRoot } from "./lib/netns.mjs";
import { launchIn, gotoRetrying } from "./lib/browser.mjs";
import { firstcallBin } from "./lib/servers.mjs";
import { signIn, videoCall } from "./lib/demo.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The shell block under "Try it on one machine" in docs/operations.md. */
function documentedCommands() {
  const doc = readFileSync(join(root, "docs/operations.md"), "utf8");
  const at = doc.indexOf("Try it on one machine");
  assert.ok(at >= 0, "docs/operations.md has the try-it section");
  const block = doc.slice(at).match(/```sh\n([\s\S]*?)```/);
  assert.ok(block, "a ```sh block follows it");
  return block[1];
}

test("docs/operations.md's two commands start Redis and two nodes whose demo pages call each other", { timeout: 120000 }, async (t) => {
  if (!requireRoot(t)) return;
  const commands = documentedCommands();
  // The page's own words: Redis on 6379 and nodes on 8081 and 8082.
  assert.match(commands, /redis-server --port 6379/);
  assert.match(commands, /127\.0\.0\.1:808\$n/);
  // Not under /tmp, which the commands get a fresh one of (below).
  mkdirSync(join(root, "target"), { recursive: true });
  const dir = mkdtempSync(join(root, "target", "docs-cluster-"));
  // `firstcall` on the PATH, as an installed package puts it.
  const bin = join(dir, "bin");
  mkdirSync(bin);
  symlinkSync(firstcallBin(), join(bin, "firstcall"));
  const ns = new NetNs();
  t.after(() => ns.close());
  // The commands leave their processes in the background and the shell waits for them.
  // It runs as the first process of a PID namespace of its own (`--kill-child`): when
  // the test kills it, by its PID, Redis and the nodes go with it, whatever state the
  // test stopped in. /tmp is a fresh tmpfs in a mount namespace of its own, so the
  // page's /tmp/fc1 and /tmp/fc2 are this test's alone; Redis writes its append-only file
  // in the working directory. Nothing of the page's runs if that set-up fails.
  const script = `mount -t tmpfs tmpfs /tmp && cd ${dir} && export PATH=${bin}:$PATH || exit 1\n${commands}\nwait\n`;
  const log = join(dir, "commands.log");
  const out = openSync(log, "a");
  const shell = spawn("ip", ["netns", "exec", ns.name, "unshare", "--mount", "--propagation", "private",
    "--pid", "--fork", "--kill-child", "bash", "-c", script], { stdio: ["ignore", out, out] });
  // One hook: the processes go before their directory.
  t.after(async () => {
    const gone = shell.exitCode !== null || shell.signalCode !== null ? Promise.resolve() : new Promise((r) => shell.once("exit", r));
    shell.kill("SIGKILL");
    await gone;
    rmSync(dir, { recursive: true, force: true });
  });

  const { browser, close } = await launchIn(ns);
  t.after(close);
  const problems = [];
  const open = async (port, name) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    page.on("pageerror", (e) => problems.push(`${name} page error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`${name} console: ${m.text()}`));
    // Once the node listens (it may wait for Redis, then applies the log first).
    await gotoRetrying(page, `http://127.0.0.1:${port}/`, { upWithinMs: 20000 });
    await signIn(page, name);
    return page;
  };
  let alice, bob;
  try {
    alice = await open(8081, "alice");
    bob = await open(8082, "bob");
  } catch (e) {
    throw new Error(`${e.message}\ncommands' output:\n${readFileSync(log, "utf8").slice(-3000)}`);
  }
  // Bob is on the other node, and Alice sees him online there.
  await videoCall(alice, bob, "alice", "bob");
  t.diagnostic(`alice (node 8081) connected to bob (node 8082) in ${await alice.textContent("#ttc")}`);
  await bob.click("#hangup");
  await alice.waitForFunction(() => document.getElementById("call-state").textContent === "ended (hangup)", null, { timeout: 10000 });
  assert.deepEqual(problems, [], "no page error or console error");
});
