#!/usr/bin/env python3
"""One call's packets, from netsim's captures (NETSIM_PCAP=DIR netsim/run ...), as a timeline.

    netsim/pcap_timeline.py DIR SCENARIO T0_MS [WINDOW_MS]

Reads DIR/SCENARIO-{a,b,srv}.pcap (tcpdump on caller host A, callee host B, the server),
keeps the packets from T0_MS (epoch ms, the harness's `t0` of the call) for WINDOW_MS
(default 3000), and names each by RFC 7983's first-byte demultiplexing, looking inside TURN
(Send and Data indications, ChannelData) for what they carry: STUN binding checks (with
USE-CANDIDATE), TURN requests, DTLS records (handshake message types, ChangeCipherSpec,
application data), SRTP/SRTCP. Prints one line per packet: time since T0, where it was
captured, direction, addresses, what it is. Standard library only.
"""

import struct
import sys
from pathlib import Path

STUN_METHODS = {0x001: "Binding", 0x003: "Allocate", 0x004: "Refresh", 0x006: "Send", 0x007: "Data",
                0x008: "CreatePermission", 0x009: "ChannelBind"}
STUN_CLASSES = {0x000: "request", 0x010: "indication", 0x100: "success", 0x110: "error"}
DTLS_CONTENT = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "ApplicationData"}
DTLS_HS = {1: "ClientHello", 2: "ServerHello", 3: "HelloVerifyRequest", 11: "Certificate", 12: "ServerKeyExchange",
           13: "CertificateRequest", 14: "ServerHelloDone", 15: "CertificateVerify", 16: "ClientKeyExchange",
           20: "Finished"}


def pcap_packets(path):
    """(epoch seconds, IPv4 packet bytes) for each frame of a libpcap file (Ethernet or cooked)."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:  # Ethernet
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            yield ts, frame[14:]
        elif linktype == 113:  # Linux cooked v1
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            yield ts, frame[16:]


def dtls(payload):
    """DTLS records in a datagram, named."""
    names, i = [], 0
    while i + 13 <= len(payload):
        ctype = payload[i]
        epoch = struct.unpack(">H", payload[i + 3:i + 5])[0]
        length = struct.unpack(">H", payload[i + 11:i + 13])[0]
        body = payload[i + 13:i + 13 + length]
        name = DTLS_CONTENT.get(ctype, f"content{ctype}")
        if ctype == 22:
            if epoch == 0 and body:
                name = DTLS_HS.get(body[0], f"hs{body[0]}")
            else:
                name = "Finished(enc)"
        names.append(name)
        i += 13 + length
    return "DTLS " + "+".join(names) if names else "DTLS ?"


def stun_attrs(payload):
    attrs, i = {}, 20
    end = min(len(payload), 20 + struct.unpack(">H", payload[2:4])[0])
    while i + 4 <= end:
        t, n = struct.unpack(">HH", payload[i:i + 4])
        attrs.setdefault(t, payload[i + 4:i + 4 + n])
        i += 4 + n + (-n % 4)
    return attrs


def classify(payload):
    """What a UDP payload (or what TURN wraps) is, by RFC 7983's first byte."""
    if not payload:
        return "empty"
    b = payload[0]
    if b <= 3 and len(payload) >= 20:
        mtype = struct.unpack(">H", payload[:2])[0]
        method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
        klass = mtype & 0x0110
        name = f"STUN {STUN_METHODS.get(method, hex(method))} {STUN_CLASSES.get(klass, '?')}"
        attrs = stun_attrs(payload)
        if method in (0x006, 0x007) and 0x0013 in attrs:  # Send/Data indication: DATA
            return f"{name} [{classify(attrs[0x0013])}]"
        if method == 0x001 and klass == 0x000 and 0x0025 in attrs:
            name += " USE-CANDIDATE"
        if klass == 0x110 and 0x0009 in attrs and len(attrs[0x0009]) >= 4:
            code = attrs[0x0009][2] * 100 + attrs[0x0009][3]
            name += f" {code}"
        return name
    if 20 <= b <= 63:
        return dtls(payload)
    if 64 <= b <= 79 and len(payload) >= 4:
        ch = struct.unpack(">H", payload[:2])[0]
        return f"ChannelData {ch:#06x} [{classify(payload[4:])}]"
    if 128 <= b <= 191:
        pt = payload[1] & 0x7F
        return "SRTCP" if 192 <= payload[1] <= 223 else f"SRTP pt={pt}"
    return f"byte{b}"


def udp_packets(path):
    for ts, ip in pcap_packets(path):
        if len(ip) < 20 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        udp = ip[ihl:]
        if len(udp) < 8:
            continue
        sport, dport = struct.unpack(">HH", udp[:4])
        yield ts, f"{src}:{sport}", f"{dst}:{dport}", udp[8:]


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    d, scenario, t0 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000
    window = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 3.0
    rows = []
    for tag in ("a", "b", "srv"):
        f = d / f"{scenario}-{tag}.pcap"
        if not f.exists():
            continue
        for ts, src, dst, payload in udp_packets(f):
            if t0 <= ts <= t0 + window:
                rows.append((ts, tag, src, dst, classify(payload), len(payload)))
    rows.sort()
    for ts, tag, src, dst, what, n in rows:
        print(f"{(ts - t0) * 1000:8.1f} ms  {tag:>3}  {src:>21} > {dst:<21} {n:5d} B  {what}")


if __name__ == "__main__":
    main()
