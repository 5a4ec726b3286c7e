/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * xdp_guard: types, limits and map names shared by the kernel program (xdp_guard.bpf.c)
 * and its user-space loader (agent/xdp/). Plain C so both sides read the same layout;
 * every struct is a map key or value, so field names show up in `bpftool map dump`.
 */
#ifndef OFFLOAD_XDP_GUARD_H
#define OFFLOAD_XDP_GUARD_H

#ifndef __bpf__
#include <linux/types.h>
#endif

/* Compile-time limits of the parser and the maps. */
#define XG_MAX_VLAN_TAGS	2	/* 802.1Q / 802.1AD tags read; a third is dropped */
#define XG_MAX_IPV6_EXT		6	/* IPv6 extension headers walked; a seventh is dropped */
#define XG_MAX_AGENT_CPUS	16	/* cores service traffic can be steered to */
#define XG_MAX_SERVICE_PORTS	64	/* entries in xdp_port_stats */
#define XG_DENY_HOSTS_MAX	65536	/* exact /32 and /128 entries, per family */
#define XG_DENY_PREFIXES_MAX	16384	/* shorter prefixes in the LPM tries, per family */
#define XG_ALLOW_PREFIXES_MAX	16384	/* allow-only mode prefixes, per family */
#define XG_SYN_SOURCES_MAX	65536	/* SYN buckets (LRU: the least recent source is evicted) */
#define XG_CPUMAP_QSIZE		2048	/* frames queued per steering CPU */
#define XG_NSEC_PER_SEC		1000000000ULL

/*
 * Pins: every map under XG_PIN_DIR by its own name (all start with "xdp_", since other
 * programs pin beside them), and the bpf_link as XG_LINK_PIN.
 */
#define XG_PIN_DIR		"/sys/fs/bpf/offload"
#define XG_LINK_PIN		"xdp_link"

/*
 * Why a packet left the program. Each reason has one fixed verdict (see xg_reason_action
 * in the program and docs/xdp_guard.md); struct xg_stats has one counter per reason, in
 * this order.
 */
enum xg_reason {
	XG_PASS_NON_IP = 0,	/* PASS: not IPv4/IPv6 (ARP, LLDP, ...) */
	XG_PASS_NON_TCP,	/* PASS: IP but not TCP (UDP, ICMP, ESP, no next header) */
	XG_PASS_FRAGMENT,	/* PASS: a non-first IP fragment from an admitted source */
	XG_PASS_OTHER_PORT,	/* PASS: TCP to a port that is not a service port */
	XG_PASS_SERVICE,	/* PASS: service port, but no agent CPU to steer to */
	XG_REDIRECT_SERVICE,	/* REDIRECT: service port, steered to an agent CPU */
	XG_DROP_MALFORMED,	/* DROP: truncated or malformed header */
	XG_DROP_VLAN_DEPTH,	/* DROP: more than XG_MAX_VLAN_TAGS VLAN tags */
	XG_DROP_EXT_DEPTH,	/* DROP: more than XG_MAX_IPV6_EXT IPv6 extension headers */
	XG_DROP_DENY,		/* DROP: source in the deny set */
	XG_DROP_NOT_ALLOWED,	/* DROP: allow-only mode and the source is not allowed */
	XG_DROP_SYN_RATE,	/* DROP: SYN over the source's token bucket */
	XG_REASON_MAX,
};

/* The per-CPU verdict counters: map "xdp_stats", one entry, one field per enum xg_reason. */
struct xg_stats {
	__u64 pass_non_ip;
	__u64 pass_non_tcp;
	__u64 pass_fragment;
	__u64 pass_other_port;
	__u64 pass_service;
	__u64 redirect_service;
	__u64 drop_malformed;
	__u64 drop_vlan_depth;
	__u64 drop_ext_depth;
	__u64 drop_deny;
	__u64 drop_not_allowed;
	__u64 drop_syn_rate;
};

/* Per service port (map "xdp_port_stats", per-CPU hash keyed by the TCP port in host order). */
struct xg_port_stats {
	__u64 packets;		/* every TCP packet to the port from an admitted source */
	__u64 bytes;		/* frame bytes of those packets */
	__u64 syns;		/* SYN without ACK admitted by the bucket */
	__u64 redirected;	/* steered to an agent CPU */
};

/* Map "xdp_config": one entry, written by the loader; the program reads it per packet. */
struct xg_config {
	__u32 allow_only;	/* 1: drop IP packets whose source is not in xdp_allow_v4/v6 */
	__u32 syn_rate;		/* SYN tokens per second per source; 0 disables the bucket */
	__u32 syn_burst;	/* bucket size in SYNs (at least 1 when syn_rate is set) */
	__u32 cpu_count;	/* entries used in cpus[]; 0: no steering */
	__u32 cpus[XG_MAX_AGENT_CPUS];	/* agent CPUs (keys of xdp_cpu_map) */
	__u64 test_clock_ns;	/* tests only: when non-zero, the bucket's clock */
	__u32 ifindex;		/* for operators: where the loader attached the guard */
	char ifname[16];
};

/* xdp_deny_v4 / xdp_deny_v6 (hash, whole addresses) and their value. */
struct xg_addr4 {
	__u8 addr[4];
};

struct xg_addr6 {
	__u8 addr[16];
};

struct xg_deny_entry {
	__u64 packets;		/* packets dropped by this entry (all CPUs, atomic) */
};

/* xdp_deny_lpm_v4, xdp_allow_v4 (LPM tries): prefixlen first, as the kernel requires. */
struct xg_lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct xg_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * xdp_syn_buckets: LRU hash keyed by source. IPv4 sources are stored v4-mapped
 * (::ffff:a.b.c.d); IPv6 sources by their /64, because one host owns a whole /64.
 */
struct xg_bucket {
	__u64 tokens;		/* in nano-tokens: one SYN costs XG_NSEC_PER_SEC */
	__u64 last_ns;		/* clock at the last refill */
};

#endif /* OFFLOAD_XDP_GUARD_H */
