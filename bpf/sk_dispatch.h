/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * sk_dispatch: the layout shared by the sk_lookup program (sk_dispatch.bpf.c) and its
 * loader (agent/dispatch/). A listener that serves a port range ("127.0.0.1:9100-9199")
 * listens on the range's first port only; the program hands every new connection to a
 * port of the range to that socket (and the kernel's SO_REUSEPORT choice then spreads
 * them over the shards' sockets of that port, as for a single port).
 */
#ifndef OFFLOAD_SK_DISPATCH_H
#define OFFLOAD_SK_DISPATCH_H

#ifndef __bpf__
#include <linux/types.h>
#endif

#define SKD_RANGES_MAX	64	/* port-range listeners per agent */

/*
 * One range, a value of "skd_ranges" (index = its slot in "skd_socks"). Addresses are in
 * network order; an all-zero address (0.0.0.0 or ::) matches every local address of
 * its family. Ports are in host order, both ends included.
 */
struct skd_range {
	__u32 family;		/* AF_INET (2) or AF_INET6 (10); 0: an unused slot */
	__u32 addr[4];		/* IPv4 in addr[0] */
	__u16 port_first;
	__u16 port_last;
	__u64 connections;	/* new connections handed to the socket (per range, racy add) */
};

#endif
