// A small internet in network namespaces.
//
//   client ns ── LAN ── nat ns ══ link ns (user-space delay/jitter/loss) ══ inet ns ── srv ns
//
// Public space is documentation ranges: the server is 203.0.113.1 (and .2 for the NAT
// probe), NAT WAN links are 198.51.100.(4i+1)/30, LANs are 198.18.i.0/24. Nothing
// routes outside these namespaces.
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, writeFileSync, rmSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const run = (args) => execFileSync(args[0], args.slice(1), { stdio: ["ignore", "pipe", "pipe"] }).toString();

export class Lab {
  constructor(linkemBin) {
    this.prefix = `fcn${process.pid % 100000}`;
    this.linkemBin = linkemBin;
    this.namespaces = [];
    this.procs = [];
    this.inet = this.ns("inet");
    this.sysctl(this.inet, "net.ipv4.ip_forward=1");
    this.srv = this.ns("srv");
    this.veth(this.srv, "eth0", this.inet, "srv");
    this.ip(this.srv, "addr", "add", "203.0.113.1/24", "dev", "eth0");
    this.ip(this.srv, "addr", "add", "203.0.113.2/24", "dev", "eth0");
    this.ip(this.inet, "addr", "add", "203.0.113.254/24", "dev", "srv");
    this.up(this.srv, "eth0");
    this.up(this.inet, "srv");
    this.ip(this.srv, "route", "add", "default", "via", "203.0.113.254");
    this.sites = [];
  }

  ns(name) {
    const full = `${this.prefix}-${name}`;
    run(["ip", "netns", "add", full]);
    this.namespaces.push(full);
    // No IPv6 duplicate-address detection: its completion a second or two after a link
    // comes up is an address change that Chromium reports as a network change, aborting
    // page loads (ERR_NETWORK_CHANGED) and resetting ICE gathering mid-call.
    this.sysctl(full, "net.ipv6.conf.default.accept_dad=0");
    this.sysctl(full, "net.ipv6.conf.all.accept_dad=0");
    this.ip(full, "link", "set", "lo", "up");
    return full;
  }
  ip(ns, ...args) {
    return run(["ip", "-n", ns, ...args]);
  }
  exec(ns, ...argv) {
    return run(["ip", "netns", "exec", ns, ...argv]);
  }
  sysctl(ns, kv) {
    this.exec(ns, "sysctl", "-qw", kv);
  }
  up(ns, dev) {
    this.ip(ns, "link", "set", "dev", dev, "up");
  }
  veth(nsA, a, nsB, b) {
    run(["ip", "link", "add", "fctmpa", "type", "veth", "peer", "name", "fctmpb"]);
    run(["ip", "link", "set", "fctmpa", "netns", nsA, "name", a]);
    run(["ip", "link", "set", "fctmpb", "netns", nsB, "name", b]);
  }

  /**
   * A site: `clients` hosts on a LAN behind a NAT of `kind`
   * ("none" | "cone" | "symmetric" | "udp-blocked"), reached over a link with
   * `delayMs` one-way delay, `jitterMs` and `loss`.
   */
  addSite(kind, { clients = 1, delayMs = 0, jitterMs = 0, loss = 0, isolate = false } = {}) {
    const i = this.sites.length + 1;
    const nat = this.ns(`n${i}`);
    const link = this.ns(`l${i}`);
    this.sysctl(nat, "net.ipv4.ip_forward=1");
    const wanIp = `198.51.100.${4 * i + 1}`;
    const inetIp = `198.51.100.${4 * i + 2}`;
    // The namespace facing the link: the NAT itself, or for "cgnat" a carrier-grade NAT
    // (RFC 6598's 100.64.0.0/10 between it and the home NAT, RFC 6888's endpoint-
    // independent mapping) with the home NAT behind it.
    const cgn = kind === "cgnat" ? this.ns(`g${i}`) : null;
    const edge = cgn ?? nat;
    // edge ─ link ─ inet, the link namespace forwarding frames in user space.
    this.veth(edge, "wan", link, "a");
    this.veth(link, "b", this.inet, `w${i}`);
    this.ip(edge, "addr", "add", `${wanIp}/30`, "dev", "wan");
    this.ip(this.inet, "addr", "add", `${inetIp}/30`, "dev", `w${i}`);
    for (const [n, d] of [[edge, "wan"], [link, "a"], [link, "b"], [this.inet, `w${i}`]]) this.up(n, d);
    // Veths leave TCP/UDP checksums for later (offload); frames re-injected by the user-space
    // link would then arrive with partial checksums and be dropped. Compute them up front.
    this.exec(edge, "ethtool", "-K", "wan", "tx", "off");
    this.exec(this.inet, "ethtool", "-K", `w${i}`, "tx", "off");
    this.ip(edge, "route", "add", "default", "via", inetIp);
    if (cgn) {
      this.sysctl(cgn, "net.ipv4.ip_forward=1");
      this.veth(nat, "wan", cgn, "sub");
      this.ip(nat, "addr", "add", `100.64.${i}.2/30`, "dev", "wan");
      this.ip(cgn, "addr", "add", `100.64.${i}.1/30`, "dev", "sub");
      this.up(nat, "wan");
      this.up(cgn, "sub");
      this.ip(nat, "route", "add", "default", "via", `100.64.${i}.1`);
      const cg = (...a) => this.exec(cgn, "iptables", ...a);
      cg("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE");
      cg("-A", "FORWARD", "-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP");
    }
    const linkem = spawn("ip", ["netns", "exec", link, this.linkemBin, "a", "b", "--delay-ms", String(delayMs), "--jitter-ms", String(jitterMs), "--loss", String(loss), "--seed", String(1000 + i), ...(process.env.NETSIM_LINK_REORDER ? ["--reorder"] : [])], { stdio: "ignore" });
    this.procs.push(linkem);
    // LAN: a bridge in the NAT namespace with each client host on it; with `isolate`, a
    // bridge and a subnet per host, no forwarding between them, and (Linux NAT's default)
    // no hairpinning: two hosts behind one NAT that cannot reach each other directly.
    if (kind === "nat64") return this.finishNat64Site({ i, kind, nat, link, wanIp, clients });
    const lans = isolate ? clients : 1;
    const subnet = (k) => (isolate ? `198.18.${16 * i + k}` : `198.18.${i}`);
    for (let k = 0; k < lans; k++) {
      this.ip(nat, "link", "add", `br${k}`, "type", "bridge");
      this.ip(nat, "addr", "add", `${subnet(k)}.1/24`, "dev", `br${k}`);
      this.up(nat, `br${k}`);
    }
    if (isolate) this.exec(nat, "iptables", "-A", "FORWARD", "-i", "br+", "-o", "br+", "-j", "DROP");
    const hosts = [];
    for (let k = 0; k < clients; k++) {
      const lan = isolate ? k : 0;
      const c = this.ns(`c${i}${String.fromCharCode(97 + k)}`);
      this.veth(c, "eth0", nat, `lan${k}`);
      this.ip(nat, "link", "set", `lan${k}`, "master", `br${lan}`);
      this.up(nat, `lan${k}`);
      const ip = `${subnet(lan)}.${10 + k}`;
      this.ip(c, "addr", "add", `${ip}/24`, "dev", "eth0");
      this.up(c, "eth0");
      this.ip(c, "route", "add", "default", "via", `${subnet(lan)}.1`);
      hosts.push({ ns: c, ip });
    }
    const ipt = (...a) => this.exec(nat, "iptables", ...a);
    switch (kind) {
      case "none":
        this.ip(this.inet, "route", "add", `198.18.${i}.0/24`, "via", wanIp);
        break;
      case "cone":
      case "cgnat":
      case "symmetric":
        ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", ...(kind === "symmetric" ? ["--random-fully"] : []));
        // Without this, a peer's check arriving before our own outbound packet creates
        // a conntrack entry that forces a new mapping: plain MASQUERADE turns symmetric.
        ipt("-A", "FORWARD", "-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP");
        break;
      case "udp-blocked":
        ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE");
        ipt("-A", "FORWARD", "-i", "br+", "-p", "tcp", "-d", "203.0.113.1", "-m", "multiport", "--dports", "443,3478", "-j", "ACCEPT");
        ipt("-A", "FORWARD", "-i", "br+", "-j", "DROP");
        break;
      case "tcp443-only":
        // A hotel or corporate network: TCP to port 443, anywhere, and nothing else.
        ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE");
        ipt("-A", "FORWARD", "-i", "br+", "-p", "tcp", "--dport", "443", "-j", "ACCEPT");
        ipt("-A", "FORWARD", "-i", "br+", "-j", "DROP");
        break;
      default:
        throw new Error(`unknown NAT kind ${kind}`);
    }
    const site = { i, kind, nat, link, wanIp, hosts };
    this.sites.push(site);
    return site;
  }

  /**
   * An IPv6-only LAN behind a NAT64 (RFC 6146) in the NAT namespace: Debian's tayga on a
   * tun device translates 2001:db8:64::/96 (a network-specific prefix, RFC 6052) to IPv4
   * from a 192.0.2.0/25 pool, which MASQUERADE then maps to the WAN address, with the
   * cone NAT's filtering. Hosts have no IPv4 address at all; they reach IPv4 names through
   * /etc/netns/<ns>/hosts entries synthesised as DNS64 would (`hosts()`).
   */
  finishNat64Site({ i, kind, nat, link, wanIp, clients }) {
    this.sysctl(nat, "net.ipv6.conf.all.forwarding=1");
    this.ip(nat, "link", "add", "br0", "type", "bridge");
    this.ip(nat, "-6", "addr", "add", `2001:db8:${i}::1/64`, "dev", "br0");
    this.up(nat, "br0");
    const dir = mkdtempSync(join(tmpdir(), "firstcall-tayga-"));
    this.dirs = [...(this.dirs ?? []), dir];
    const conf = join(dir, "tayga.conf");
    writeFileSync(conf, `tun-device nat64\nipv4-addr 192.0.2.1\nprefix 2001:db8:64::/96\ndynamic-pool 192.0.2.0/25\ndata-dir ${dir}\n`);
    this.exec(nat, "tayga", "--mktun", "--config", conf);
    this.up(nat, "nat64");
    this.ip(nat, "addr", "add", "192.0.2.200/32", "dev", "nat64");
    this.ip(nat, "-6", "addr", "add", `2001:db8:ff${i}::1/128`, "dev", "nat64");
    this.ip(nat, "route", "add", "192.0.2.0/25", "dev", "nat64");
    this.ip(nat, "-6", "route", "add", "2001:db8:64::/96", "dev", "nat64");
    const tayga = spawn("ip", ["netns", "exec", nat, "tayga", "--config", conf, "--nodetach"], { stdio: "ignore" });
    this.procs.push(tayga);
    const ipt = (...a) => this.exec(nat, "iptables", ...a);
    ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE");
    ipt("-A", "FORWARD", "-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP");
    const hosts = [];
    for (let k = 0; k < clients; k++) {
      const c = this.ns(`c${i}${String.fromCharCode(97 + k)}`);
      this.veth(c, "eth0", nat, `lan${k}`);
      this.ip(nat, "link", "set", `lan${k}`, "master", "br0");
      this.up(nat, `lan${k}`);
      const ip = `2001:db8:${i}::${10 + k}`;
      this.ip(c, "-6", "addr", "add", `${ip}/64`, "dev", "eth0", "nodad");
      this.up(c, "eth0");
      // tayga adjusts checksums incrementally: a veth's unfinished (offloaded) one would
      // come out of it wrong. Compute them up front.
      this.exec(c, "ethtool", "-K", "eth0", "tx", "off");
      this.ip(c, "-6", "route", "add", "default", "via", `2001:db8:${i}::1`);
      hosts.push({ ns: c, ip, v6only: true });
    }
    const site = { i, kind, nat, link, wanIp, hosts };
    this.sites.push(site);
    return site;
  }

  /**
   * Names for `ns` (an /etc/netns/<ns>/hosts file, which `ip netns exec` puts in place of
   * /etc/hosts): `entries` maps a name to an IPv4 address; an IPv6-only host gets the
   * NAT64 address of it instead, as a DNS64 resolver would synthesise.
   */
  hosts(host, entries) {
    const dir = `/etc/netns/${host.ns}`;
    mkdirSync(dir, { recursive: true });
    this.etc = [...(this.etc ?? []), dir];
    const v6 = (ip4) => `2001:db8:64::${ip4.split(".").map(Number).reduce((a, b, j) => (j % 2 ? a + b.toString(16).padStart(2, "0") : a + (j ? ":" : "") + b.toString(16)), "")}`;
    const lines = Object.entries(entries).map(([name, ip]) => `${host.v6only ? v6(ip) : ip} ${name}`);
    writeFileSync(join(dir, "hosts"), `127.0.0.1 localhost\n::1 localhost\n${lines.join("\n")}\n`);
  }

  /** Which mapping the NAT in front of `host` really shows, measured with STUN. */
  probe(host, script) {
    const to = host.v6only ? ["2001:db8:64::cb00:7101", "2001:db8:64::cb00:7102"] : ["203.0.113.1", "203.0.113.2"];
    try {
      return JSON.parse(this.exec(host.ns, "python3", script, ...to, "3478"));
    } catch (e) {
      return { mapping: "unmeasured", error: String(e).slice(0, 200) };
    }
  }

  close() {
    for (const p of this.procs) p.kill("SIGKILL");
    for (const d of [...(this.etc ?? []), ...(this.dirs ?? [])]) rmSync(d, { recursive: true, force: true });
    for (const ns of this.namespaces.reverse()) {
      try {
        run(["ip", "netns", "delete", ns]);
      } catch {
        /* gone */
      }
    }
  }
}
