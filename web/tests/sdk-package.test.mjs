// web/sdk as an npm package: `npm pack` it, install the tarball in a fresh project, and
// type-check a small app (and every TypeScript example of web/sdk/README.md) against it
// with the repository's own TypeScript in strict mode, declarations checked too
// (skipLibCheck off). Misuse must not compile, and the packed declarations must not show
// the SDK's internals. Offline: the tarball has no dependencies and TypeScript is run
// from web/node_modules. No browser.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
const sdk = join(web, "sdk");
const tsc = join(web, "node_modules/typescript/bin/tsc");
const pkg = JSON.parse(readFileSync(join(sdk, "package.json"), "utf8"));

let tmp, tarball, unpacked, app;

/** Run a child process, bounded; its output is returned, never inherited. */
function run(cmd, args, { cwd, timeout = 60_000 } = {}) {
  // A nested npm must not inherit the settings of an `npm test` that runs us.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
  const r = spawnSync(cmd, args, { cwd, env, timeout, encoding: "utf8", killSignal: "SIGKILL" });
  if (r.error) throw new Error(`${cmd} ${args.join(" ")}: ${r.error.message}`);
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function ok(cmd, args, opts) {
  const r = run(cmd, args, opts);
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")} failed:\n${r.out}`);
  return r.out;
}

const npmFlags = ["--offline", "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=error"];

before(() => {
  tmp = mkdtempSync(join(tmpdir(), "firstcall-sdk-package-"));
  const packs = join(tmp, "packs");
  mkdirSync(packs);
  const packed = JSON.parse(
    ok("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", packs, "--cache", join(tmp, "cache"), ...npmFlags], { cwd: sdk }),
  );
  tarball = join(packs, packed[0].filename);
  unpacked = join(tmp, "unpacked");
  mkdirSync(unpacked);
  ok("tar", ["-xzf", tarball, "-C", unpacked], { timeout: 30_000 });
  app = join(tmp, "app");
  mkdirSync(join(app, "src"), { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "firstcall-sdk-example", private: true, type: "module" }, null, 2));
  ok("npm", ["install", tarball, "--cache", join(tmp, "cache"), "--ignore-scripts", ...npmFlags], { cwd: app, timeout: 120_000 });
});

after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Type-check `files` (under app/src) with the repo's TypeScript, in strict mode. */
function typecheck(files, { resolution = "NodeNext" } = {}) {
  const config = `tsconfig.${resolution}.${files.length}.${files[0].replace(/\W/g, "_")}.json`;
  writeFileSync(
    join(app, config),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: "ES2022",
        lib: ["ES2022", "DOM"],
        module: resolution === "NodeNext" ? "NodeNext" : "ESNext",
        moduleResolution: resolution,
        // The package's declarations are checked too: one that names a stripped type fails here.
        skipLibCheck: false,
        types: [],
      },
      files: files.map((f) => `src/${f}`),
    }),
  );
  return run(process.execPath, [tsc, "-p", config, "--pretty", "false"], { cwd: app, timeout: 120_000 });
}

test("the tarball holds the package manifest, README and dist: ESM with declarations, nothing else", () => {
  const files = [];
  const walk = (dir, rel) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(dir, e.name), `${rel}${e.name}/`);
      else files.push(`${rel}${e.name}`);
    }
  };
  walk(join(unpacked, "package"), "");
  const modules = readdirSync(join(sdk, "src")).filter((f) => f.endsWith(".ts")).map((f) => f.slice(0, -3));
  const expected = ["README.md", "package.json", ...modules.flatMap((m) => [`dist/${m}.d.ts`, `dist/${m}.js`])];
  assert.deepEqual(files.sort(), expected.sort());
  const manifest = JSON.parse(readFileSync(join(unpacked, "package/package.json"), "utf8"));
  assert.equal(manifest.type, "module");
  assert.deepEqual(manifest.exports["."], { types: "./dist/firstcall.d.ts", import: "./dist/firstcall.js" });
  assert.equal(manifest.sideEffects, false);
  assert.equal(manifest.dependencies, undefined, "no runtime dependencies");
  const cargo = readFileSync(join(web, "../Cargo.toml"), "utf8");
  assert.equal(manifest.license, /^license = "([^"]+)"/m.exec(cargo)[1], "the repository's licence");
  assert.equal(manifest.version, pkg.version);
});

test("the packed declarations show no internals", () => {
  const dist = join(unpacked, "package/dist");
  const dts = readdirSync(dist).filter((f) => f.endsWith(".d.ts"));
  assert.ok(dts.includes("firstcall.d.ts"));
  // Members tagged @internal in the source, for the SDK's own use.
  const internal = ["restoreSeq", "onSessionState", "takeWarmPeer", "rtcConfiguration", "awaitingPeer", "fromDevice", "inCall"];
  for (const f of dts) {
    const text = readFileSync(join(dist, f), "utf8");
    assert.doesNotMatch(text, /@internal/, `${f} has an @internal member`);
    for (const name of internal) assert.doesNotMatch(text, new RegExp(`\\b${name}\\b`), `${f} shows ${name}`);
  }
  // Still in the JavaScript: the SDK uses them.
  assert.match(readFileSync(join(dist, "call.js"), "utf8"), /restoreSeq/);
});

test("the installed package loads as an ES module under its own name", () => {
  const out = ok(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `import * as sdk from "${pkg.name}";
       const e = new sdk.FirstcallError("media", "m");
       console.log(JSON.stringify({ connect: typeof sdk.connect, client: typeof sdk.createClient, call: typeof sdk.Call,
         error: e instanceof Error && e.name === "FirstcallError" && e.code === "media" }));`,
    ],
    { cwd: app, timeout: 30_000 },
  );
  assert.deepEqual(JSON.parse(out), { connect: "function", client: "function", call: "function", error: true });
});

const example = `// A small app against the published package.
import { connect, FirstcallError, type Call, type CallEvents, type Client, type FirstcallErrorCode, type QualityReport } from "${pkg.name}";

async function token(): Promise<string> {
  const r = await fetch("/api/firstcall-token");
  const body = (await r.json()) as { token: string };
  return body.token;
}

export async function main(video: HTMLVideoElement): Promise<Call | null> {
  let client: Client;
  try {
    client = await connect("wss://calls.example.org/v1/ws", { token, prewarm: true, firstConnectTimeoutMs: 5000 });
  } catch (e) {
    if (e instanceof FirstcallError) {
      const code: FirstcallErrorCode = e.code;
      if (code === "unauthorized" || code === "no_welcome") return null;
    }
    throw e;
  }
  client.on("state", (s) => {
    const known: "connecting" | "connected" | "reconnecting" | "closed" = s;
    console.log(known);
  });
  client.on("incoming", (call) => {
    console.log(call.peer, call.media);
    void call.accept({ video: false });
  });
  client.on("fatal", (e) => {
    const code: FirstcallErrorCode = e.error.code;
    console.error(code, e.code, e.reason, e.error.closeCode, e.error.message);
  });

  const call = client.call("bob", { video: true });
  call.on("quality", (q) => {
    const rtt: number | null = q.rttMs;
    console.log(rtt, q.level);
  });
  const onQuality: CallEvents["quality"] = (q: QualityReport) => console.log(q.loss);
  call.on("quality", onQuality).off("quality", onQuality);
  call.on("remotestream", (s) => {
    video.srcObject = s;
  });
  call.on("ended", (reason) => console.log(reason, call.summary?.durationMs));
  await call.mute("audio");
  await call.unmute("audio");
  try {
    await call.shareScreen();
  } catch (e) {
    if (!(e instanceof FirstcallError && (e.code === "media" || e.code === "invalid_state"))) throw e;
  }
  return call;
}
`;

test("a small app type-checks against the installed package (strict, NodeNext and Bundler)", () => {
  writeFileSync(join(app, "src/app.ts"), example);
  for (const resolution of ["NodeNext", "Bundler"]) {
    const r = typecheck(["app.ts"], { resolution });
    assert.equal(r.status, 0, `tsc (${resolution}):\n${r.out}`);
  }
});

test("every TypeScript example of web/sdk/README.md type-checks against the installed package", () => {
  const readme = readFileSync(join(unpacked, "package/README.md"), "utf8");
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length >= 4, `README has its examples (${blocks.length})`);
  const files = blocks.map((code, i) => {
    writeFileSync(join(app, `src/readme-${i}.ts`), code);
    return `readme-${i}.ts`;
  });
  const r = typecheck(files);
  assert.equal(r.status, 0, `tsc:\n${r.out}`);
});

test("every TypeScript example of docs/integrate.md type-checks against the installed package", () => {
  const doc = readFileSync(join(web, "../docs/integrate.md"), "utf8");
  const blocks = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length >= 3, `integrate.md has its examples (${blocks.length})`);
  const files = blocks.map((code, i) => {
    writeFileSync(join(app, `src/integrate-${i}.ts`), code);
    return `integrate-${i}.ts`;
  });
  const r = typecheck(files);
  assert.equal(r.status, 0, `tsc:\n${r.out}`);
});

test("misuse does not compile: misspelt events, wrong listener types, unknown codes, internals", () => {
  // Each line marked `// TSnnnn` must fail with that error, and nothing else may fail.
  const misuse = `import { connect, FirstcallError, type Client } from "${pkg.name}";
export async function misuse(client: Client): Promise<void> {
  client.on("incomming", () => {}); // TS2345
  const call = client.call("bob", { video: true });
  call.on("quality", (q: string) => console.log(q)); // TS2345
  call.on("quality", (q) => console.log(q.rtt)); // TS2339
  call.on("state", (s) => s === "talking"); // TS2367
  client.on("fatal", (e) => e.error.code === "nope"); // TS2367
  await call.mute("screen"); // TS2345
  client.call("bob", { video: "yes" }); // TS2322
  await connect("wss://x", {}); // TS2345
  const e = new FirstcallError("oops", "m"); // TS2345
  console.log(e, call.restoreSeq); // TS2339
  call.onSessionState("connected", "x"); // TS2339
}
`;
  writeFileSync(join(app, "src/misuse.ts"), misuse);
  const r = typecheck(["misuse.ts"]);
  assert.notEqual(r.status, 0, "misuse compiled");
  const expected = misuse
    .split("\n")
    .map((line, i) => [i + 1, /\/\/ (TS\d+)$/.exec(line)?.[1]])
    .filter(([, code]) => code)
    .map(([line, code]) => `${line} ${code}`);
  const got = [...r.out.matchAll(/^src\/misuse\.ts\((\d+),\d+\): error (TS\d+)/gm)].map((m) => `${m[1]} ${m[2]}`);
  assert.deepEqual([...new Set(got)], expected, `tsc:\n${r.out}`);
});
