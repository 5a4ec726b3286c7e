// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * sk_dispatch: one listening socket serves a whole port range. Attached to the network
 * namespace (BPF_SK_LOOKUP), it runs for each new TCP connection before the kernel looks
 * for a listener: a destination that falls in a configured range gets that range's socket
 * (skd_socks[i]); anything else, or a range whose socket is gone, is left to the usual
 * lookup (SK_PASS without a socket), so the program never refuses a connection itself.
 * The connection keeps its destination, so the agent reads the port it was made to with
 * getsockname() (upstream_port = "same").
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "sk_dispatch.h"

#define SKD_AF_INET	2
#define SKD_AF_INET6	10
#define SKD_IPPROTO_TCP	6

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SKD_RANGES_MAX);
	__type(key, __u32);
	__type(value, __u64);
} skd_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SKD_RANGES_MAX);
	__type(key, __u32);
	__type(value, struct skd_range);
} skd_ranges SEC(".maps");

static __always_inline int address_matches(const struct skd_range *r, const struct bpf_sk_lookup *ctx)
{
	if (r->family == SKD_AF_INET)
		return r->addr[0] == 0 || r->addr[0] == ctx->local_ip4;
	if ((r->addr[0] | r->addr[1] | r->addr[2] | r->addr[3]) == 0)
		return 1;
	return r->addr[0] == ctx->local_ip6[0] && r->addr[1] == ctx->local_ip6[1] &&
	       r->addr[2] == ctx->local_ip6[2] && r->addr[3] == ctx->local_ip6[3];
}

SEC("sk_lookup")
int sk_dispatch(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != SKD_IPPROTO_TCP)
		return SK_PASS;
	const __u32 port = ctx->local_port;  /* host order */
	for (__u32 i = 0; i < SKD_RANGES_MAX; i++) {
		__u32 slot = i;
		struct skd_range *r = bpf_map_lookup_elem(&skd_ranges, &slot);
		if (!r || r->family == 0)
			break;  /* slots are filled from 0 without gaps */
		if (r->family != ctx->family || port < r->port_first || port > r->port_last)
			continue;
		if (!address_matches(r, ctx))
			continue;
		struct bpf_sock *sk = bpf_map_lookup_elem(&skd_socks, &slot);
		if (!sk)
			return SK_PASS;  /* its socket is gone: the usual lookup decides */
		long err = bpf_sk_assign(ctx, sk, 0);
		bpf_sk_release(sk);
		if (err == 0)
			__sync_fetch_and_add(&r->connections, 1);
		return SK_PASS;
	}
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
