// SPDX-License-Identifier: GPL-2.0
// firstcall's TURN fast path (issue 23.3): ChannelData <-> UDP for established channel
// bindings, rewritten in the kernel and sent back out of the interface it came in on
// (XDP_TX). Built by crates/server/build.rs with clang (-target bpf), loaded by the
// server with aya when `--xdp IFACE` is given.
//
// What it does, IPv4 only:
//   client -> server:  ChannelData to the TURN port whose (client address, channel) is in
//                      `channels`: the 4-byte header is cut, and the datagram leaves from the
//                      relayed address to the peer.
//   peer -> relay:     a datagram to a relay port whose (peer address, relay port) is in
//                      `peers`: a ChannelData header is added, and it leaves from the TURN
//                      address to the client.
//   relay -> relay:    a client's ChannelData whose peer is another relayed address of this
//                      server that has a channel back: rewritten straight into that client's
//                      ChannelData (the same size).
// Everything else, and anything it is unsure of (IP options, fragments, a length that does
// not match, padding, an expired entry, IPv6), is passed to the kernel and so to the server,
// whose user-space path is complete on its own. The server's sans-IO core decides what is in
// the maps: a channel is there only while it is bound, its peer permitted and its allocation
// alive (each entry carries the earliest of those expiries, checked here against the same
// monotonic clock), and only when no bandwidth limit applies to it. UDP checksums of
// rewritten datagrams are set to 0 (allowed for UDP over IPv4, RFC 768).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Keys and values: addresses and ports in network byte order, as they are on the wire.
struct chan_key {
	__u32 client_ip;
	__u16 client_port;
	__u16 channel;
};

struct chan_val {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
	__u32 pad;
	__u64 expires_ns;
};

struct peer_key {
	__u32 peer_ip;
	__u16 peer_port;
	__u16 relay_port;
};

struct peer_val {
	__u32 client_ip;
	__u32 server_ip;
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
	__u64 expires_ns;
};

struct config {
	__u32 relay_ip;
	/* The TURN listener's address: the destination of clients' ChannelData and the
	 * source of ChannelData to clients. */
	__u32 server_ip;
	/* The interface's MTU: a frame that would leave larger goes the slow way (which
	 * fragments), and so does a GRO-merged one. */
	__u32 mtu;
	__u16 turn_port;
	__u16 pad;
};

/* Loopback's index in every network namespace: there XDP_TX delivers locally. */
#define LOOPBACK_IFINDEX 1

// What the fast path did, per CPU: [0] to peers, [1] to clients, [2] relay to relay.
#define STAT_TO_PEER 0
#define STAT_TO_CLIENT 1
#define STAT_HAIRPIN 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct chan_key);
	__type(value, struct chan_val);
} FC_CHANNELS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct peer_key);
	__type(value, struct peer_val);
} FC_PEERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} FC_CONFIG SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} FC_STATS SEC(".maps");

#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&FC_STATS, &which);
	if (n)
		*n += 1;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline void swap_mac(struct ethhdr *eth)
{
	unsigned char tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

// Write the headers of a datagram of `payload` bytes from saddr:sport to daddr:dport.
static __always_inline void set_udp(struct iphdr *ip, struct udphdr *udp, __u32 saddr, __u16 sport,
				    __u32 daddr, __u16 dport, __u16 payload)
{
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct udphdr) + payload);
	ip->check = ip_checksum(ip);
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(sizeof(struct udphdr) + payload);
	udp->check = 0;
}

SEC("xdp")
int firstcall_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	// Fragments (MF set or an offset) go to the kernel, which reassembles them.
	if (ip->frag_off & bpf_htons(0x3fff))
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	__u16 ulen = bpf_ntohs(udp->len);
	// The datagram must fill the frame exactly (no link-layer padding to account for).
	if (ulen < sizeof(struct udphdr) || (void *)udp + ulen != end)
		return XDP_PASS;
	__u16 payload = ulen - sizeof(struct udphdr);
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&FC_CONFIG, &zero);
	if (!cfg || cfg->turn_port == 0)
		return XDP_PASS;
	__u64 now = bpf_ktime_get_ns();

	/* On a real interface, a frame to one of our own addresses would leave the host
	 * instead of reaching the local socket: such traffic takes the slow way. */
	int on_lo = ctx->ingress_ifindex == LOOPBACK_IFINDEX;

	if (udp->dest == cfg->turn_port && ip->daddr == cfg->server_ip) {
		// ChannelData from a client: channel 0x4000-0x7FFF, then its length.
		unsigned char *cd = (void *)(udp + 1);
		if ((void *)(cd + 4) > end || (cd[0] & 0xc0) != 0x40)
			return XDP_PASS;
		__u16 len = ((__u16)cd[2] << 8) | cd[3];
		// Over UDP ChannelData need not be padded; a padded one goes the slow way.
		if (len + 4 != payload)
			return XDP_PASS;
		struct chan_key ck = {
			.client_ip = ip->saddr,
			.client_port = udp->source,
			.channel = *(__u16 *)cd,
		};
		struct chan_val *cv = bpf_map_lookup_elem(&FC_CHANNELS, &ck);
		if (!cv || now >= cv->expires_ns || cv->peer_port == cfg->turn_port)
			return XDP_PASS;
		if (!on_lo && ip->saddr == cfg->server_ip)
			return XDP_PASS;
		if (cv->peer_ip == cfg->relay_ip) {
			// The peer is another relayed address of this server: with a channel back to
			// this relay, the datagram becomes that client's ChannelData at once.
			struct peer_key pk = {
				.peer_ip = cv->relay_ip,
				.peer_port = cv->relay_port,
				.relay_port = cv->peer_port,
			};
			struct peer_val *pv = bpf_map_lookup_elem(&FC_PEERS, &pk);
			if (!pv || now >= pv->expires_ns)
				return XDP_PASS;
			if (!on_lo && (pv->client_ip == cfg->server_ip || pv->client_ip == cfg->relay_ip))
				return XDP_PASS;
			*(__u16 *)cd = pv->channel;
			set_udp(ip, udp, pv->server_ip, pv->server_port, pv->client_ip, pv->client_port, payload);
			swap_mac(eth);
			count(STAT_HAIRPIN);
			return XDP_TX;
		}
		if (!on_lo && cv->peer_ip == cfg->server_ip)
			return XDP_PASS;
		// Cut the 4-byte header: move the headers up by 4, then the start of the frame.
		struct ethhdr e = *eth;
		struct iphdr i = *ip;
		__u32 relay_ip = cv->relay_ip, peer_ip = cv->peer_ip;
		__u16 relay_port = cv->relay_port, peer_port = cv->peer_port;
		if (bpf_xdp_adjust_head(ctx, 4))
			return XDP_PASS;
		data = (void *)(long)ctx->data;
		end = (void *)(long)ctx->data_end;
		if (data + HEADERS > end)
			return XDP_DROP;
		eth = data;
		ip = (void *)(eth + 1);
		udp = (void *)(ip + 1);
		*eth = e;
		*ip = i;
		set_udp(ip, udp, relay_ip, relay_port, peer_ip, peer_port, len);
		swap_mac(eth);
		count(STAT_TO_PEER);
		return XDP_TX;
	}

	// From a peer to a relay port. A datagram from the relay address itself arriving from
	// outside is spoofed (genuine relay-to-relay traffic never comes in from the wire);
	// the kernel would drop it as martian, which runs after XDP: leave it to the kernel.
	if (ip->daddr != cfg->relay_ip || (!on_lo && ip->saddr == cfg->relay_ip))
		return XDP_PASS;
	struct peer_key pk = {
		.peer_ip = ip->saddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct peer_val *pv = bpf_map_lookup_elem(&FC_PEERS, &pk);
	if (!pv || now >= pv->expires_ns ||
	    sizeof(struct iphdr) + sizeof(struct udphdr) + 4 + (__u32)payload > cfg->mtu)
		return XDP_PASS;
	if (!on_lo && (pv->client_ip == cfg->server_ip || pv->client_ip == cfg->relay_ip))
		return XDP_PASS;
	struct ethhdr e = *eth;
	struct iphdr i = *ip;
	__u32 client_ip = pv->client_ip, server_ip = pv->server_ip;
	__u16 client_port = pv->client_port, server_port = pv->server_port, channel = pv->channel;
	// Room for the 4-byte header in front of the payload.
	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + HEADERS + 4 > end)
		return XDP_DROP;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	*eth = e;
	*ip = i;
	unsigned char *cd = (void *)(udp + 1);
	*(__u16 *)cd = channel;
	cd[2] = payload >> 8;
	cd[3] = payload & 0xff;
	set_udp(ip, udp, server_ip, server_port, client_ip, client_port, payload + 4);
	swap_mac(eth);
	count(STAT_TO_CLIENT);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
