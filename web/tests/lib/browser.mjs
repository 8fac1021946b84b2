// Debian's Chromium, launched by playwright-core inside a network namespace through a
// wrapper script (playwright talks to it over a pipe, which `exec` preserves).
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * @param ns the namespace to run in
 * @param trustCerts PEM certificates this browser trusts as roots (a throwaway NSS
 *   database under a temporary HOME), so `turns:` is tested with real verification.
 */
export async function launchIn(ns, { trustCerts = [], extraArgs = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "firstcall-chromium-"));
  const home = join(dir, "home");
  const nssdb = join(home, ".pki", "nssdb");
  mkdirSync(nssdb, { recursive: true });
  if (trustCerts.length) {
    execFileSync("certutil", ["-d", `sql:${nssdb}`, "-N", "--empty-password"], { stdio: "ignore" });
    trustCerts.forEach((pem, i) =>
      execFileSync("certutil", ["-d", `sql:${nssdb}`, "-A", "-t", "CT,C,C", "-n", `firstcall-test-${i}`, "-i", pem], { stdio: "ignore" }),
    );
  }
  const wrapper = join(dir, "chromium-in-ns");
  writeFileSync(wrapper, `#!/bin/sh\nexport HOME=${home}\nexec ip netns exec ${ns.name} /usr/bin/chromium "$@"\n`);
  chmodSync(wrapper, 0o755);
  const browser = await chromium.launch({
    executablePath: wrapper,
    timeout: 30000,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      ...extraArgs,
    ],
  });
  const close = async () => {
    await browser.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  return { browser, close };
}

/**
 * Navigate, retrying (3 tries) when Chromium aborts the load for a network change, and,
 * with `upWithinMs`, every 100 ms while nothing listens at `url` yet, for that long (a
 * server still starting).
 */
export async function gotoRetrying(page, url, { upWithinMs = 0 } = {}) {
  const deadline = Date.now() + upWithinMs;
  for (let changes = 0; ; ) {
    try {
      return await page.goto(url);
    } catch (e) {
      if (String(e).includes("ERR_NETWORK_CHANGED") && changes++ < 2) {
        process.stderr.write(`  (network change while loading ${url}; retrying)\n`);
      } else if (String(e).includes("ERR_CONNECTION_REFUSED") && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
      } else {
        throw e;
      }
    }
  }
}
