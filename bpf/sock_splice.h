/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * sock_splice: the map values shared by the kernel program (sock_splice.bpf.c) and the
 * agent (agent/splice/). Every map is keyed by a socket cookie (SO_COOKIE, a u64 that no
 * other socket ever has), so `bpftool map dump pinned .../splice_flows` names each
 * direction of a pair by the cookie of the socket its bytes come from.
 */
#ifndef OFFLOAD_SOCK_SPLICE_H
#define OFFLOAD_SOCK_SPLICE_H

#ifndef __bpf__
#include <linux/types.h>
#endif

/* Map names (at most 15 characters: the kernel's BPF_OBJ_NAME_LEN is 16). */
#define SS_MAP_SOCKS	"splice_socks"	/* sockhash: cookie -> socket */
#define SS_MAP_PEERS	"splice_peers"	/* cookie -> the peer socket's cookie */
#define SS_MAP_FLOWS	"splice_flows"	/* cookie -> struct ss_flow (the program writes it) */
#define SS_MAP_CTL	"splice_ctl"	/* cookie -> struct ss_ctl (the agent writes it) */

/* What the program does with the bytes that arrive on a socket. */
enum ss_flow_state {
	/*
	 * Just inserted: skbs are passed to the socket's own queue, where the agent reads and
	 * forwards them (the bytes that came before the insertion are there too), until the
	 * first skb before which the agent has forwarded every byte the socket received.
	 */
	SS_SETUP = 0,
	/* skbs go to the peer's egress, while the kernel holds less than the budget for it. */
	SS_REDIRECT = 1,
	/*
	 * Over the budget (the peer's receiver is slow): skbs are passed, charged to this
	 * socket's receive buffer (so its sender waits); the agent forwards them once the
	 * redirected bytes have gone out. Back to SS_REDIRECT as SS_SETUP is left.
	 */
	SS_PAUSED = 2,
};

/* One direction of a pair, keyed by its source socket's cookie. Written by the program. */
struct ss_flow {
	__u64 bytes;	/* bytes redirected to the peer by the kernel */
	__u64 passed;	/* bytes passed to the source socket's own queue (for the agent) */
	__u32 state;	/* enum ss_flow_state */
	__u32 pauses;	/* times the budget was exceeded */
};

/* The agent's side of a direction. Written by the agent, read by the program. */
struct ss_ctl {
	/*
	 * Bytes of this direction the agent has read from the source and sent to the peer
	 * (each send complete). A passing flow is redirected again only at an skb before
	 * which the source received no byte more than this: none waits in user space.
	 */
	__u64 user_sent;
	__u64 budget;	/* bytes the kernel may hold for the peer (backlog + send queue) */
};

#endif /* OFFLOAD_SOCK_SPLICE_H */
