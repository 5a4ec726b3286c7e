// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * sock_splice: moves the bytes of a pass-through pair (a client socket and its server
 * socket) in the kernel. Both sockets sit in splice_socks (a sockhash keyed by socket
 * cookie) with this program attached as its stream verdict; splice_peers says which
 * socket is whose peer. Each skb that arrives on a socket of the map is redirected to
 * the peer's egress, with three rules that keep every byte:
 *   - no peer entry (a pair being set up or torn down, any other socket): SK_PASS, the
 *     bytes stay on their socket for the agent to read; nothing is ever dropped;
 *   - a passing flow (SS_SETUP, SS_PAUSED) is redirected again only at an skb that is
 *     the one byte range its socket received that the agent has not forwarded (the
 *     bytes that came before the insertion, and every passed one, go first, in user
 *     space: none overtakes another);
 *   - the budget: a redirected skb waits in the peer's backlog, uncharged to any
 *     socket, while the peer's receiver is slow. When the kernel already holds more than
 *     the budget for the peer, the flow turns SS_PAUSED: its skbs are passed, charged to
 *     the source socket (so its sender's window closes), and the agent forwards them at
 *     the receiver's pace.
 * The agent watches both sockets for FIN, reset and errors (the redirect passes on no
 * FIN) and removes the entries; see agent/splice/splicer.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "sock_splice.h"

#define SS_MAX_SOCKETS 65536	/* the loader sets the real sizes from max_clients */

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SS_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} splice_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SS_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u64);
} splice_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SS_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct ss_flow);
} splice_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SS_MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct ss_ctl);
} splice_ctl SEC(".maps");

/*
 * The fields read from a tcp_sock, relocated against the running kernel's BTF (the
 * ___splice suffix makes it a local flavour of struct tcp_sock).
 */
struct tcp_sock___splice {
	__u64 bytes_received;	/* in order, up to and with the skb being judged */
	__u64 bytes_acked;
} __attribute__((preserve_access_index));

/* Verdicts of one socket run one at a time (under its lock), so plain adds suffice. */
static __always_inline int pass(struct ss_flow *flow, __u32 len)
{
	flow->passed += len;
	return SK_PASS;
}

/*
 * Bytes the kernel holds for the peer: what went to it (the agent's sends before the
 * redirect began, then the redirects) less what its receiver acknowledged. -1 when the
 * peer is not in the map (closed, or reset: it left the sockhash).
 */
static __always_inline __s64 held_for_peer(const struct ss_flow *flow, const struct ss_ctl *ctl,
					   __u64 peer_cookie)
{
	struct bpf_sock *peer = bpf_map_lookup_elem(&splice_socks, &peer_cookie);
	if (!peer)
		return -1;
	struct tcp_sock___splice *tp = (void *)bpf_skc_to_tcp_sock(peer);
	__s64 held = -1;
	if (tp)
		held = (__s64)(ctl->user_sent + flow->bytes) - (__s64)tp->bytes_acked;
	bpf_sk_release(peer);
	/* The SYN may count in bytes_acked: a held of -1 is nothing held. */
	return tp ? (held < 0 ? 0 : held) : -1;
}

/*
 * Has every byte the source received before this skb gone on, redirected or forwarded
 * by the agent? Then a redirect of it cannot overtake one. Unknown (the socket left the
 * map): no.
 */
static __always_inline int caught_up(const struct ss_flow *flow, const struct ss_ctl *ctl, __u64 self,
				     __u32 len)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&splice_socks, &self);
	if (!sk)
		return 0;
	struct tcp_sock___splice *tp = (void *)bpf_skc_to_tcp_sock(sk);
	int yes = tp && ctl->user_sent + flow->bytes + len == tp->bytes_received;
	bpf_sk_release(sk);
	return yes;
}

SEC("sk_skb/stream_verdict")
int splice_verdict(struct __sk_buff *skb)
{
	__u64 self = bpf_get_socket_cookie(skb);
	__u64 *peer = bpf_map_lookup_elem(&splice_peers, &self);
	if (!peer)
		return SK_PASS;
	__u64 peer_cookie = *peer;
	struct ss_flow *flow = bpf_map_lookup_elem(&splice_flows, &self);
	struct ss_ctl *ctl = bpf_map_lookup_elem(&splice_ctl, &self);
	if (!flow || !ctl)
		return SK_PASS;
	__u32 len = skb->len;
	/*
	 * A FIN comes as an skb of no bytes (the socket has its end already: RCV_SHUTDOWN).
	 * Redirected, the peer's backlog would send it after the agent has shut the peer's
	 * writes; passed while this socket's backlog is busy, it is queued, and the backlog
	 * takes a zero-byte ingress for a broken pipe (EPIPE on this socket). Freed, it loses
	 * no byte.
	 */
	if (len == 0)
		return SK_DROP;

	if (flow->state != SS_REDIRECT && !caught_up(flow, ctl, self, len))
		return pass(flow, len);

	__s64 held = held_for_peer(flow, ctl, peer_cookie);
	if (held < 0 || (__u64)held + len > ctl->budget) {
		if (flow->state == SS_REDIRECT) {
			flow->state = SS_PAUSED;
			flow->pauses++;
		}
		return pass(flow, len);
	}
	flow->state = SS_REDIRECT;
	flow->bytes += len;
	return bpf_sk_redirect_hash(skb, &splice_socks, &peer_cookie, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
