// The TypeScript SDK's session layer against the conformance kit (docs/conformance.md), in a
// child Node process (Node 20 has WebSocket only behind --experimental-websocket).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const runner = join(dirname(fileURLToPath(import.meta.url)), "lib/conformance-runner.mjs");

test("the TypeScript SDK's session layer passes the conformance kit", (t) => {
  const flags = typeof WebSocket === "undefined" ? ["--experimental-websocket"] : [];
  const r = spawnSync(process.execPath, [...flags, runner], { encoding: "utf8", timeout: 180_000 });
  for (const line of r.stdout.trim().split("\n")) t.diagnostic(line);
  assert.equal(r.status, 0, `runner failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /passed \d+ scenarios/);
});
