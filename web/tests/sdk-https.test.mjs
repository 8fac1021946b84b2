// --http-tls in a real browser: Chromium, trusting a test CA, loads the demo's origin over
// https://, signs in over wss:// and places a call with camera and microphone, which it
// grants only to a secure page (issue 19: a server reached by name needs TLS).
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetNs } from "./lib/netns.mjs";
import { launchIn } from "./lib/browser.mjs";
import { startFirstcall } from "./lib/servers.mjs";
import { openClient, connectedWithMedia } from "./lib/sdk.mjs";

const isRoot = process.getuid && process.getuid() === 0;

describe("HTTPS and WSS in Chromium", { skip: !isRoot && !process.env.CI && "not root" }, () => {
  let ns, server, browser, closeBrowser, certDir;
  before(async () => {
    ns = new NetNs();
    certDir = mkdtempSync(join(tmpdir(), "firstcall-cert-"));
    const cert = join(certDir, "cert.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", join(certDir, "key.pem"), "-out", cert, "-days", "2",
      "-subj", `/CN=${ns.addr}`, "-addext", `subjectAltName=IP:${ns.addr}`], { stdio: "ignore" });
    server = await startFirstcall(ns, [
      "--tls-cert", cert, "--tls-key", join(certDir, "key.pem"),
      "--http-tls", "--turn-tls-listen", `${ns.addr}:5349`,
    ], { tlsCa: cert });
    // No --unsafely-treat-insecure-origin-as-secure: the page is secure by its certificate.
    ({ browser, close: closeBrowser } = await launchIn(ns, { trustCerts: [cert] }));
  });
  after(async () => {
    await closeBrowser?.();
    server?.stop();
    ns?.close();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  test("the page is a secure context over https, signaling over wss, a call with camera and microphone connects", async () => {
    assert.ok(server.origin.startsWith("https://") && server.ws.startsWith("wss://"));
    const b = await openClient(browser, server.origin, "s-bob", { autoAccept: true, urls: server.ws });
    const a = await openClient(browser, server.origin, "s-alice", { urls: server.ws });
    assert.equal(await a.page.evaluate(() => window.isSecureContext), true, "https page: secure context");
    assert.equal(await a.page.evaluate(() => location.protocol), "https:");
    await a.page.evaluate(() => (window.call = window.client.call("s-bob", { video: true })));
    const [sa, sb] = await Promise.all([connectedWithMedia(a.page, "window.call"), connectedWithMedia(b.page, "window.calls[0]")]);
    for (const s of [sa, sb]) assert.equal(s.restarts, 0, "first attempt");
    await a.close();
    await b.close();
  });
});
