#!/usr/bin/env python3
"""Measure a NAT's mapping behaviour (RFC 4787): from ONE local UDP socket, send STUN
Binding requests to two server addresses and compare the mapped addresses.
Same mapping for both: endpoint-independent (cone). Different: address-dependent
(symmetric). Prints JSON. Sends only to the addresses given (the lab's server)."""
import json, os, socket, struct, sys

def binding(sock, addr):
    tid = os.urandom(12)
    sock.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid, addr)
    for _ in range(3):
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            sock.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid, addr)
            continue
        if data[8:20] != tid:
            continue
        pos = 20
        while pos + 4 <= len(data):
            t, l = struct.unpack("!HH", data[pos:pos + 4])
            v = data[pos + 4:pos + 4 + l]
            if t == 0x0020 and v[1] == 1:
                port = struct.unpack("!H", v[2:4])[0] ^ 0x2112
                ip = bytes(b ^ c for b, c in zip(v[4:8], struct.pack("!I", 0x2112A442)))
                return f"{socket.inet_ntoa(ip)}:{port}"
            pos += 4 + l + ((4 - l % 4) % 4)
    return None

# An IPv6 server address (a NAT64-synthesised one, for an IPv6-only host): an IPv6 socket;
# the mapped address that comes back is the NAT64's IPv4 one.
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.bind(("::" if v6 else "0.0.0.0", 0))
a = binding(s, (sys.argv[1], int(sys.argv[3])))
b = binding(s, (sys.argv[2], int(sys.argv[3])))
kind = "unknown" if not (a and b) else ("endpoint-independent" if a == b else "address-dependent")
print(json.dumps({"local": f"{s.getsockname()[0]}:{s.getsockname()[1]}", "family": "IPv6" if v6 else "IPv4", "mapped_1": a, "mapped_2": b, "mapping": kind}))
