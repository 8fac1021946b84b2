// A small internet in network namespaces.
//
//   client ns ── LAN ── nat ns ══ link ns (user-space delay/jitter/loss) ══ inet ns ── srv ns
//
// Public space is documentation ranges: the server is 203.0.113.1 (and .2 for the NAT
// probe), NAT WAN links are 198.51.100.(4i+1)/30, LANs are 198.18.i.0/24. Nothing
// routes outside these namespaces.
import { execFileSync, spawn } from "node:child_process";

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

  /** Which mapping the NAT in front of `host` really shows, measured with STUN. */
  probe(host, script) {
    try {
      return JSON.parse(this.exec(host.ns, "python3", script, "203.0.113.1", "203.0.113.2", "3478"));
    } catch (e) {
      return { mapping: "unmeasured", error: String(e).slice(0, 200) };
    }
  }

  close() {
    for (const p of this.procs) p.kill("SIGKILL");
    for (const ns of this.namespaces.reverse()) {
      try {
        run(["ip", "netns", "delete", ns]);
      } catch {
        /* gone */
      }
    }
  }
}
