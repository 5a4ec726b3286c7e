// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * xdp_guard: the agent's front door, run on the NIC before the kernel allocates anything.
 *
 * For every frame: parse Ethernet, up to two VLAN tags, IPv4 or IPv6 (with its extension
 * headers) and TCP, each step bounds-checked against data_end by a cursor; then
 *   - drop sources in the deny set (exact hosts in a hash, shorter prefixes in an LPM trie),
 *   - in allow-only mode, drop sources not in the allow set,
 *   - drop SYNs (SYN without ACK) over the source's token bucket,
 *   - steer TCP to a service port to an agent CPU through xdp_cpu_map,
 *   - pass everything else.
 * The rules for truncated frames, fragments and extension headers are in docs/xdp_guard.md.
 * Every packet leaves through finish(), which counts its reason in the per-CPU "stats" map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdp_guard.h"

#define XG_ETH_P_IP	0x0800
#define XG_ETH_P_IPV6	0x86DD
#define XG_ETH_P_8021Q	0x8100
#define XG_ETH_P_8021AD	0x88A8

#define XG_PROTO_HOPOPTS	0
#define XG_PROTO_TCP		6
#define XG_PROTO_ROUTING	43
#define XG_PROTO_FRAGMENT	44
#define XG_PROTO_AH		51
#define XG_PROTO_ICMPV6		58
#define XG_PROTO_DSTOPTS	60

#define XG_TCP_SYN	0x02
#define XG_TCP_ACK	0x10

#define XG_IP_OFFSET_MASK	0x1fff

/* The verdict of each reason follows from its place in enum xg_reason. */
_Static_assert(XG_PASS_SERVICE + 1 == XG_REDIRECT_SERVICE, "reasons: PASS, REDIRECT, DROP");
_Static_assert(sizeof(struct xg_stats) == XG_REASON_MAX * sizeof(__u64), "one counter per reason");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xg_config);
} xdp_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xg_stats);
} xdp_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, XG_MAX_SERVICE_PORTS);
	__type(key, __u16);
	__type(value, struct xg_port_stats);
} xdp_port_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XG_DENY_HOSTS_MAX);
	__type(key, struct xg_addr4);
	__type(value, struct xg_deny_entry);
} xdp_deny_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XG_DENY_HOSTS_MAX);
	__type(key, struct xg_addr6);
	__type(value, struct xg_deny_entry);
} xdp_deny_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, XG_DENY_PREFIXES_MAX);
	__type(key, struct xg_lpm4);
	__type(value, struct xg_deny_entry);
} xdp_deny_lpm_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, XG_DENY_PREFIXES_MAX);
	__type(key, struct xg_lpm6);
	__type(value, struct xg_deny_entry);
} xdp_deny_lpm_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, XG_ALLOW_PREFIXES_MAX);
	__type(key, struct xg_lpm4);
	__type(value, __u32);
} xdp_allow_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, XG_ALLOW_PREFIXES_MAX);
	__type(key, struct xg_lpm6);
	__type(value, __u32);
} xdp_allow_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XG_SYN_SOURCES_MAX);
	__type(key, struct xg_addr6);
	__type(value, struct xg_bucket);
} xdp_syn_buckets SEC(".maps");

/* Keys are CPU ids; the loader sizes it to the possible CPUs and fills the agent's. */
struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bpf_cpumap_val);
} xdp_cpu_map SEC(".maps");

struct cursor {
	void *pos;
	void *end;
};

/* What the parser learned about one packet. */
struct packet {
	struct xg_addr6 src;	/* IPv4 sources v4-mapped */
	struct xg_port_stats *port;	/* the service port's counters, when it is one */
	__u32 len;		/* frame bytes */
	__u32 flow_hash;	/* picks the agent CPU: one flow stays on one CPU */
	__u16 sport;
	__u16 dport;
	__u8 is_v6;
	__u8 non_first_fragment;
	__u8 l4_proto;
	__u8 tcp_flags;
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* The two bytes every chained IPv6 extension header starts with. */
struct ipv6_ext {
	__u8 next;
	__u8 len;
};

struct ipv6_frag {
	__u8 next;
	__u8 reserved;
	__be16 offset_flags;	/* offset in 8-byte units in the top 13 bits */
	__be32 id;
};

static __always_inline int is_vlan(__u16 proto)
{
	return proto == XG_ETH_P_8021Q || proto == XG_ETH_P_8021AD;
}

static __always_inline int is_ipv6_ext(__u8 proto)
{
	return proto == XG_PROTO_HOPOPTS || proto == XG_PROTO_ROUTING ||
	       proto == XG_PROTO_FRAGMENT || proto == XG_PROTO_DSTOPTS || proto == XG_PROTO_AH;
}

/* Ethernet and up to XG_MAX_VLAN_TAGS tags. Returns the ethertype (host order) or -1. */
static __always_inline int parse_eth(struct cursor *c)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return -1;
	c->pos = eth + 1;
	__u16 proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < XG_MAX_VLAN_TAGS; i++) {
		struct vlan_tag *tag = c->pos;

		if (!is_vlan(proto))
			break;
		if ((void *)(tag + 1) > c->end)
			return -1;
		c->pos = tag + 1;
		proto = bpf_ntohs(tag->proto);
	}
	return proto;
}

/* IPv4 with options. Returns the protocol or -1 (truncated or malformed). */
static __always_inline int parse_ipv4(struct cursor *c, struct packet *p)
{
	struct iphdr *ip = c->pos;

	if ((void *)(ip + 1) > c->end)
		return -1;
	__u8 version_ihl = *(__u8 *)ip;
	__u32 hdr_len = (version_ihl & 0x0f) * 4;
	__u32 total_len = bpf_ntohs(ip->tot_len);

	if ((version_ihl >> 4) != 4 || hdr_len < sizeof(*ip) || total_len < hdr_len)
		return -1;
	/* The datagram must be all there (Ethernet padding may follow it). */
	if ((void *)ip + total_len > c->end)
		return -1;
	__u16 offset = bpf_ntohs(ip->frag_off) & XG_IP_OFFSET_MASK;

	/* RFC 1858: a TCP fragment at offset 8 bytes could rewrite the flags. */
	if (offset == 1 && ip->protocol == XG_PROTO_TCP)
		return -1;
	p->non_first_fragment = offset != 0;
	p->src.addr[10] = 0xff;
	p->src.addr[11] = 0xff;
	__builtin_memcpy(&p->src.addr[12], &ip->saddr, 4);
	c->pos = (void *)ip + hdr_len;
	return ip->protocol;
}

/* The fixed IPv6 header. Returns the next header or -1. */
static __always_inline int parse_ipv6(struct cursor *c, struct packet *p)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > c->end)
		return -1;
	if ((*(__u8 *)ip6 >> 4) != 6)
		return -1;
	if ((void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > c->end)
		return -1;
	p->is_v6 = 1;
	__builtin_memcpy(p->src.addr, &ip6->saddr, sizeof(p->src.addr));
	c->pos = ip6 + 1;
	return ip6->nexthdr;
}

/*
 * Walks at most XG_MAX_IPV6_EXT extension headers. Returns the first protocol that is not
 * an extension header (an extension header when the chain is longer than the walk), or -1
 * when a header is truncated. A fragment header with a non-zero offset ends the walk: the
 * rest of the chain is not in this packet.
 */
static __always_inline int skip_ipv6_ext(struct cursor *c, struct packet *p, int proto)
{
	for (int i = 0; i < XG_MAX_IPV6_EXT; i++) {
		struct ipv6_ext *ext = c->pos;
		__u32 len;

		if (!is_ipv6_ext(proto))
			return proto;
		if (proto == XG_PROTO_FRAGMENT) {
			struct ipv6_frag *frag = c->pos;

			if ((void *)(frag + 1) > c->end)
				return -1;
			c->pos = frag + 1;
			if (bpf_ntohs(frag->offset_flags) >> 3) {
				p->non_first_fragment = 1;
				return frag->next;
			}
			proto = frag->next;
			continue;
		}
		if ((void *)(ext + 1) > c->end)
			return -1;
		if (proto == XG_PROTO_AH)
			len = ((__u32)ext->len + 2) * 4;
		else
			len = ((__u32)ext->len + 1) * 8;
		if (c->pos + len > c->end)
			return -1;
		proto = ext->next;
		c->pos += len;
	}
	return proto;
}

/* TCP with its options. Returns 0 or -1 (truncated, or a data offset under 5 words). */
static __always_inline int parse_tcp(struct cursor *c, struct packet *p)
{
	struct tcphdr *tcp = c->pos;

	if ((void *)(tcp + 1) > c->end)
		return -1;
	__u32 hdr_len = (((__u8 *)tcp)[12] >> 4) * 4;

	if (hdr_len < sizeof(*tcp) || (void *)tcp + hdr_len > c->end)
		return -1;
	p->sport = bpf_ntohs(tcp->source);
	p->dport = bpf_ntohs(tcp->dest);
	p->tcp_flags = ((__u8 *)tcp)[13];
	c->pos = (void *)tcp + hdr_len;
	return 0;
}

/* Neighbour discovery (ICMPv6 133-137) stays reachable in allow-only mode. */
static __always_inline int is_neighbour_discovery(struct cursor *c, struct packet *p)
{
	__u8 *type = c->pos;

	if (!p->is_v6 || p->l4_proto != XG_PROTO_ICMPV6 || p->non_first_fragment)
		return 0;
	if ((void *)(type + 1) > c->end)
		return 0;
	return *type >= 133 && *type <= 137;
}

static __always_inline struct xg_deny_entry *find_denied(struct packet *p)
{
	struct xg_deny_entry *entry;

	if (!p->is_v6) {
		struct xg_lpm4 key = { .prefixlen = 32 };

		__builtin_memcpy(key.addr, &p->src.addr[12], 4);
		entry = bpf_map_lookup_elem(&xdp_deny_v4, key.addr);
		if (!entry)
			entry = bpf_map_lookup_elem(&xdp_deny_lpm_v4, &key);
		return entry;
	}
	struct xg_lpm6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, p->src.addr, 16);
	entry = bpf_map_lookup_elem(&xdp_deny_v6, key.addr);
	if (!entry)
		entry = bpf_map_lookup_elem(&xdp_deny_lpm_v6, &key);
	return entry;
}

static __always_inline int is_allowed(struct packet *p)
{
	if (!p->is_v6) {
		struct xg_lpm4 key = { .prefixlen = 32 };

		__builtin_memcpy(key.addr, &p->src.addr[12], 4);
		return bpf_map_lookup_elem(&xdp_allow_v4, &key) != NULL;
	}
	struct xg_lpm6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, p->src.addr, 16);
	return bpf_map_lookup_elem(&xdp_allow_v6, &key) != NULL;
}

/*
 * The per-source SYN token bucket. Tokens are kept in nano-tokens so that the refill,
 * elapsed_ns * syn_rate, needs no division; a full bucket holds syn_burst SYNs. Updates
 * from several CPUs for one source race benignly (a few extra SYNs may get through).
 */
static __always_inline int syn_admitted(struct packet *p, const struct xg_config *cfg)
{
	__u64 now = cfg->test_clock_ns ? cfg->test_clock_ns : bpf_ktime_get_ns();
	__u64 burst = cfg->syn_burst ? cfg->syn_burst : 1;
	__u64 cap = burst * XG_NSEC_PER_SEC;
	struct xg_addr6 key = p->src;
	struct xg_bucket *bucket;

	if (p->is_v6)
		__builtin_memset(&key.addr[8], 0, 8);
	bucket = bpf_map_lookup_elem(&xdp_syn_buckets, &key);
	if (!bucket) {
		struct xg_bucket fresh = { .tokens = cap - XG_NSEC_PER_SEC, .last_ns = now };

		bpf_map_update_elem(&xdp_syn_buckets, &key, &fresh, BPF_ANY);
		return 1;
	}
	__u64 tokens = bucket->tokens;
	__u64 elapsed = now > bucket->last_ns ? now - bucket->last_ns : 0;

	if (elapsed >= cap / cfg->syn_rate)
		tokens = cap;
	else
		tokens += elapsed * cfg->syn_rate;
	if (tokens > cap)
		tokens = cap;
	bucket->last_ns = now;
	if (tokens < XG_NSEC_PER_SEC) {
		bucket->tokens = tokens;
		return 0;
	}
	bucket->tokens = tokens - XG_NSEC_PER_SEC;
	return 1;
}

/* TCP past the source checks: the SYN bucket, then the service ports. */
static __always_inline int tcp_verdict(struct packet *p, const struct xg_config *cfg)
{
	int syn = (p->tcp_flags & (XG_TCP_SYN | XG_TCP_ACK)) == XG_TCP_SYN;

	if (syn && cfg->syn_rate && !syn_admitted(p, cfg))
		return XG_DROP_SYN_RATE;
	__u16 port = p->dport;

	p->port = bpf_map_lookup_elem(&xdp_port_stats, &port);
	if (!p->port)
		return XG_PASS_OTHER_PORT;
	p->port->packets++;
	p->port->bytes += p->len;
	if (syn)
		p->port->syns++;
	return cfg->cpu_count ? XG_REDIRECT_SERVICE : XG_PASS_SERVICE;
}

/* Everything from the first byte to the reason; every path returns a reason. */
static __always_inline int guard(struct cursor *c, struct packet *p, const struct xg_config *cfg)
{
	int proto = parse_eth(c);

	if (proto < 0)
		return XG_DROP_MALFORMED;
	if (is_vlan(proto))
		return XG_DROP_VLAN_DEPTH;
	if (proto == XG_ETH_P_IP)
		proto = parse_ipv4(c, p);
	else if (proto == XG_ETH_P_IPV6)
		proto = parse_ipv6(c, p);
	else
		return XG_PASS_NON_IP;
	if (proto < 0)
		return XG_DROP_MALFORMED;

	struct xg_deny_entry *denied = find_denied(p);

	if (denied) {
		__sync_fetch_and_add(&denied->packets, 1);
		return XG_DROP_DENY;
	}
	if (p->is_v6) {
		proto = skip_ipv6_ext(c, p, proto);
		if (proto < 0)
			return XG_DROP_MALFORMED;
		if (!p->non_first_fragment && is_ipv6_ext(proto))
			return XG_DROP_EXT_DEPTH;
	}
	p->l4_proto = proto;
	if (cfg->allow_only && !is_allowed(p) && !is_neighbour_discovery(c, p))
		return XG_DROP_NOT_ALLOWED;
	if (p->non_first_fragment)
		return XG_PASS_FRAGMENT;
	if (proto != XG_PROTO_TCP)
		return XG_PASS_NON_TCP;
	if (parse_tcp(c, p) < 0)
		return XG_DROP_MALFORMED;
	return tcp_verdict(p, cfg);
}

/* Steers to one of the agent CPUs; XDP_PASS when that CPU has no xdp_cpu_map entry. */
static __always_inline int steer(struct packet *p, const struct xg_config *cfg)
{
	__u32 words[4];

	__builtin_memcpy(words, p->src.addr, sizeof(words));
	__u32 hash = (words[0] ^ words[1] ^ words[2] ^ words[3] ^
		      ((__u32)p->sport << 16 | p->dport)) * 0x9e3779b1u;
	__u32 count = cfg->cpu_count;

	if (count == 0 || count > XG_MAX_AGENT_CPUS)
		return XDP_PASS;
	__u32 slot = (hash >> 16) % count;

	barrier_var(slot);	/* keep the check clang proves redundant: the verifier needs it */
	if (slot >= XG_MAX_AGENT_CPUS)
		return XDP_PASS;
	return bpf_redirect_map(&xdp_cpu_map, cfg->cpus[slot], XDP_PASS);
}

/* The one exit: turns the reason into the action and counts it. */
static __always_inline int finish(struct packet *p, const struct xg_config *cfg, __u32 reason)
{
	int action = XDP_PASS;
	__u32 zero = 0;

	if (reason == XG_REDIRECT_SERVICE) {
		action = steer(p, cfg);
		if (action == XDP_REDIRECT && p->port)
			p->port->redirected++;
		else
			reason = XG_PASS_SERVICE;
	} else if (reason > XG_REDIRECT_SERVICE) {
		action = XDP_DROP;
	}
	struct xg_stats *counters = bpf_map_lookup_elem(&xdp_stats, &zero);

	if (counters && reason < XG_REASON_MAX)
		((__u64 *)counters)[reason]++;
	return action;
}

SEC("xdp")
int xdp_guard(struct xdp_md *ctx)
{
	struct cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct packet p = { .len = ctx->data_end - ctx->data };
	__u32 zero = 0;
	const struct xg_config *cfg = bpf_map_lookup_elem(&xdp_config, &zero);

	if (!cfg)
		return XDP_PASS;	/* cannot happen: an array always has entry 0 */
	return finish(&p, cfg, guard(&c, &p, cfg));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
