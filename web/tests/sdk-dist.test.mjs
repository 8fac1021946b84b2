// The server embeds web/sdk/dist at compile time, so the committed build must be
// exactly what the TypeScript source compiles to.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");

test("web/sdk/dist is up to date with web/sdk/src (run `npm run build`)", () => {
  const out = mkdtempSync(join(tmpdir(), "firstcall-sdk-"));
  try {
    execFileSync(join(web, "node_modules/.bin/tsc"), ["-p", join(web, "sdk"), "--outDir", out], { stdio: "pipe" });
    for (const f of ["firstcall.js", "firstcall.d.ts"]) {
      assert.equal(readFileSync(join(web, "sdk/dist", f), "utf8"), readFileSync(join(out, f), "utf8"), `${f} is stale`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
