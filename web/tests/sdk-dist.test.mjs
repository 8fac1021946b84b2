// The server embeds web/sdk/dist at compile time, so the committed build must be
// exactly what the TypeScript source compiles to, and the server must serve every module.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");

test("web/sdk/dist is up to date with web/sdk/src (run `npm run build`)", () => {
  const out = mkdtempSync(join(tmpdir(), "firstcall-sdk-"));
  try {
    execFileSync(join(web, "node_modules/.bin/tsc"), ["-p", join(web, "sdk"), "--outDir", out], { stdio: "pipe" });
    const built = readdirSync(out).sort();
    assert.deepEqual(readdirSync(join(web, "sdk/dist")).sort(), built, "dist holds exactly the compiled files");
    for (const f of built) {
      assert.equal(readFileSync(join(web, "sdk/dist", f), "utf8"), readFileSync(join(out, f), "utf8"), `${f} is stale`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("the server embeds and serves every SDK module (crates/server/src/http.rs)", () => {
  const http = readFileSync(join(web, "../crates/server/src/http.rs"), "utf8");
  const list = /sdk_modules!\[([^\]]*)\]/.exec(http);
  assert.ok(list, "http.rs has its sdk_modules! list");
  const served = [...list[1].matchAll(/"([^"]+)"/g)].map((m) => m[1]).sort();
  const modules = readdirSync(join(web, "sdk/src")).filter((f) => f.endsWith(".ts")).map((f) => f.slice(0, -3)).sort();
  assert.deepEqual(served, modules);
});
