// A throwaway network namespace: loopback plus a veth pair whose both ends live inside
// it, one holding a documentation-range address. Nothing in it routes anywhere else, so
// Chromium's candidates and every packet of a test stay inside. (A veth rather than a
// dummy device because not every kernel here has the dummy module.)
import { execFileSync } from "node:child_process";

let counter = 0;

export function requireRoot(t) {
  if (process.getuid && process.getuid() === 0) return true;
  if (process.env.CI) throw new Error("browser tests need root to create network namespaces");
  t.skip("not root: cannot create a network namespace");
  return false;
}

function ip(...args) {
  return execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"] }).toString();
}

export class NetNs {
  /** @param {string} addr CIDR for the dummy interface, e.g. "203.0.113.1/24" */
  constructor(addr = "203.0.113.1/24") {
    this.name = `fc-${process.pid}-${counter++}`;
    this.addr = addr.split("/")[0];
    ip("netns", "add", this.name);
    try {
      // No IPv6 duplicate-address detection: its completion shortly after the veth comes
      // up is an address change Chromium treats as a network change (ERR_NETWORK_CHANGED,
      // ICE gathering reset), which made early calls in a fresh namespace flaky.
      for (const k of ["default", "all"]) {
        execFileSync("ip", ["netns", "exec", this.name, "sysctl", "-qw", `net.ipv6.conf.${k}.accept_dad=0`]);
      }
      ip("-n", this.name, "link", "set", "lo", "up");
      ip("-n", this.name, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p");
      ip("-n", this.name, "addr", "add", addr, "dev", "wan0");
      ip("-n", this.name, "link", "set", "wan0p", "up");
      ip("-n", this.name, "link", "set", "wan0", "up");
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** argv prefix that runs a command inside the namespace */
  exec(argv) {
    return ["ip", "netns", "exec", this.name, ...argv];
  }

  close() {
    try {
      ip("netns", "delete", this.name);
    } catch {
      /* already gone */
    }
  }
}
