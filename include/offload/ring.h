/*
 * The offload bus: a shared-memory ring protocol shaped like a PCIe
 * non-transparent-bridge (NTB) window. Plain C11, also valid C++20, so a
 * server written in any language with C structs and acquire/release atomics
 * can speak it.
 *
 * ---------------------------------------------------------------------------
 * Who writes what (the NTB rule)
 * ---------------------------------------------------------------------------
 * Reads across an NTB are slow and writes are posted, so every word of the
 * region has exactly one writer, and the only reads across sides are of words
 * the peer wrote *for* the reader. There is no read-modify-write of shared
 * state across sides: a side only ever stores to its own words (it may keep a
 * private copy and store an updated value, e.g. its heartbeat).
 *
 *   region header (offset 0)  written by the agent once, before it shares the
 *                             region; read-only afterwards for both sides.
 *   agent side line           written by the agent only (state, heartbeat).
 *   server side line          written by the server only.
 *   ring producer line        written by that ring's producer only: `head`
 *                             (bytes ever published) and `waiting` (the
 *                             producer sleeps until the consumer frees space).
 *   ring consumer line        written by that ring's consumer only: `tail`
 *                             (bytes ever consumed) and `waiting` (the consumer
 *                             sleeps until the producer publishes).
 *   ring data                 written by the producer between tail and head
 *                             only, read by the consumer only.
 *
 * On a real NTB the producer line and the data of a ring would live in the
 * consumer's memory (written across the bridge, read locally) and the consumer
 * line in the producer's memory; the layout below keeps each of them on its
 * own cache line(s) so that is possible.
 *
 * ---------------------------------------------------------------------------
 * Layout
 * ---------------------------------------------------------------------------
 *   [offload_region_header]                      3 cache lines, 192 bytes
 *   channel 0: [offload_ring_ctrl request]       2 cache lines
 *              [offload_ring_ctrl response]      2 cache lines
 *              [request data:  ring_bytes]       agent -> server
 *              [response data: ring_bytes]       server -> agent
 *   channel 1: ...                               channel_bytes apart
 *
 * ring_bytes is a power of two (OFFLOAD_RING_BYTES_MIN..MAX). All integers are
 * in the byte order of the machines (both sides must agree; x86 and arm64 are
 * little-endian). `head` and `tail` are free-running 64-bit byte counters; the
 * position in the data area is counter & (ring_bytes - 1).
 *
 * ---------------------------------------------------------------------------
 * Records
 * ---------------------------------------------------------------------------
 * A ring carries records, each an 8-byte offload_rec header followed by its
 * payload; the next record starts at the header's offset + round_up(len, 8).
 * A record never wraps: when the space left before the end of the data area
 * is too small, the producer first writes an OFFLOAD_REC_PAD record covering
 * exactly that space. `head` only ever moves over whole records.
 *
 * A consumer checks, before it reads anything: 0 <= head - tail <= ring_bytes,
 * head and tail 8-aligned, 8 <= len, round_up(len, 8) <= what is published
 * and <= what is left before the end of the data area, a PAD covers exactly
 * that rest, the type is known, and every offset and length inside a payload
 * lies within the payload. A violation fails the channel (never a crash, never
 * a read outside the region); it does not touch the other channels.
 *
 * ---------------------------------------------------------------------------
 * Memory ordering
 * ---------------------------------------------------------------------------
 * Producer: write the record, then store-release `head`. Consumer:
 * load-acquire `head`, read records below it, then store-release `tail`.
 * Each side keeps a cached copy of the peer's index and re-reads it only when
 * the ring looks empty (consumer) or full (producer).
 *
 * Doorbells (sleeping): a side that wants to sleep stores waiting = 1, issues
 * a sequentially consistent fence, and re-checks the peer's index; only if
 * there is still nothing to do may it block on its doorbell. After publishing
 * (head or tail) a side issues a sequentially consistent fence and then reads
 * the peer's waiting word; if it is set it rings the peer's doorbell. The two
 * fences make a lost wake-up impossible. A woken side stores waiting = 0.
 * Doorbells are eventfds, one per direction per channel: `to_server[c]` wakes
 * the server for channel c (request data, or response space freed) and
 * `to_agent[c]` wakes the agent (response data, or request space freed).
 *
 * ---------------------------------------------------------------------------
 * Attaching
 * ---------------------------------------------------------------------------
 * The agent listens on a SOCK_SEQPACKET Unix socket. For the bus name NAME
 * (`--upstream shm:NAME`) it is the abstract socket "@offload-ring-NAME"
 * (sun_path[0] = '\0', then "offload-ring-NAME", no terminating NUL). NAME is
 * 1..OFFLOAD_RING_NAME_MAX characters of [A-Za-z0-9._-]. The agent accepts
 * only peers with its own uid (or root). Any local process can bind an
 * abstract name, so the server likewise checks the listener it reached
 * (SO_PEERCRED): the agent must run as the server's uid, as root, or as the
 * uid the server was configured to expect.
 *
 * The server sends an offload_hello; the agent answers with one
 * offload_welcome message carrying, by SCM_RIGHTS, the region fd (a memfd
 * sealed with at least F_SEAL_SHRINK | F_SEAL_GROW, so the region cannot
 * change size under the server's mapping) followed by channel_count
 * `to_server` eventfds and channel_count `to_agent` eventfds. The server
 * refuses a welcome whose fds are anything else. Each attach gets a fresh region, so a
 * server that died cannot disturb its successor. The connection stays open:
 * its closing is how either side learns at once that the other is gone; the
 * heartbeat words catch a peer that hangs without closing.
 */
#ifndef OFFLOAD_RING_H
#define OFFLOAD_RING_H

#include <stdint.h>

#ifdef __cplusplus
#define OFFLOAD_RING_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
extern "C" {
#else
#define OFFLOAD_RING_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define OFFLOAD_RING_MAGIC 0x474e49524c464f31ull /* "1OFLRING" read as LE bytes */
#define OFFLOAD_RING_VERSION 1u
#define OFFLOAD_RING_CACHELINE 64u
#define OFFLOAD_RING_ALIGN 8u
#define OFFLOAD_RING_BYTES_MIN 4096u
#define OFFLOAD_RING_BYTES_MAX (1u << 30)
#define OFFLOAD_RING_CHANNELS_MAX 64u /* 1 + 2 * 64 fds fit one SCM_RIGHTS message */
#define OFFLOAD_RING_NAME_MAX 64u
#define OFFLOAD_RING_SOCKET_PREFIX "offload-ring-"
#define OFFLOAD_RING_HEARTBEAT_MS 100u /* a side stores its heartbeat this often */
#define OFFLOAD_RING_DEAD_MS 1000u     /* no heartbeat change for this long: dead */

/* offload_side.state */
#define OFFLOAD_SIDE_ABSENT 0u
#define OFFLOAD_SIDE_READY 1u
#define OFFLOAD_SIDE_CLOSING 2u

/* One side's liveness line. Written only by that side. */
struct offload_side {
  uint32_t state;     /* OFFLOAD_SIDE_* */
  uint32_t pid;       /* informative */
  uint64_t heartbeat; /* changes at least every OFFLOAD_RING_HEARTBEAT_MS */
  uint8_t pad_[48];
};

struct offload_region_header {
  uint64_t magic;         /* OFFLOAD_RING_MAGIC */
  uint32_t version;       /* OFFLOAD_RING_VERSION */
  uint32_t header_bytes;  /* sizeof(struct offload_region_header): channel 0 starts here */
  uint32_t channel_count; /* 1..OFFLOAD_RING_CHANNELS_MAX */
  uint32_t ring_bytes;    /* data bytes of each ring, a power of two */
  uint64_t channel_bytes; /* 2 * sizeof(offload_ring_ctrl) + 2 * ring_bytes */
  uint64_t region_bytes;  /* header_bytes + channel_count * channel_bytes */
  uint32_t heartbeat_ms;  /* OFFLOAD_RING_HEARTBEAT_MS */
  uint32_t reserved_;
  uint8_t pad_[16];
  struct offload_side agent;  /* written by the agent */
  struct offload_side server; /* written by the server */
};

/* The producer's line of a ring. */
struct offload_ring_prod {
  uint64_t head;    /* bytes ever published; 8-aligned */
  uint32_t waiting; /* 1: the producer sleeps until space is freed */
  uint32_t reserved_;
  uint8_t pad_[48];
};

/* The consumer's line of a ring. */
struct offload_ring_cons {
  uint64_t tail;    /* bytes ever consumed; 8-aligned */
  uint32_t waiting; /* 1: the consumer sleeps until a record is published */
  uint32_t reserved_;
  uint8_t pad_[48];
};

struct offload_ring_ctrl {
  struct offload_ring_prod prod;
  struct offload_ring_cons cons;
};

/* ---- records ------------------------------------------------------------ */

#define OFFLOAD_REC_PAD 1u           /* filler to the end of the data area */
#define OFFLOAD_REC_REQUEST 2u       /* agent -> server: offload_req */
#define OFFLOAD_REC_RESPONSE_HEAD 3u /* server -> agent: offload_resp */
#define OFFLOAD_REC_RESPONSE_BODY 4u /* server -> agent: offload_resp_body */
#define OFFLOAD_REC_RESPONSE_ABORT 5u /* server -> agent: the response cannot be completed */

#define OFFLOAD_REC_F_END 1u /* last record of this response */

struct offload_rec {
  uint32_t len;   /* bytes of this record, header included; >= 8 */
  uint16_t type;  /* OFFLOAD_REC_* */
  uint16_t flags; /* OFFLOAD_REC_F_* */
};

/* A byte range inside a record's text area. */
struct offload_span {
  uint32_t off;
  uint32_t len;
};

/* One header field: name and value, each a span of the text area. */
struct offload_field {
  struct offload_span name;
  struct offload_span value;
};

/* offload_req.method: the agent's parse of the method (text is in `method`). */
#define OFFLOAD_METHOD_GET 0u
#define OFFLOAD_METHOD_HEAD 1u
#define OFFLOAD_METHOD_POST 2u
#define OFFLOAD_METHOD_PUT 3u
#define OFFLOAD_METHOD_DELETE 4u
#define OFFLOAD_METHOD_OPTIONS 5u
#define OFFLOAD_METHOD_PATCH 6u
#define OFFLOAD_METHOD_TRACE 7u
#define OFFLOAD_METHOD_CONNECT 8u
#define OFFLOAD_METHOD_OTHER 9u

#define OFFLOAD_REQ_F_KEEP_ALIVE 1u /* the client keeps the connection (informative) */

/*
 * OFFLOAD_REC_REQUEST payload:
 *   struct offload_req
 *   struct offload_field fields[field_count]
 *   uint8_t text[text_len]   the raw HTTP/1.1 request head as forwarded (request
 *                            line, fields, empty line), then the decoded body
 * record len == 8 + sizeof(offload_req) + 16 * field_count + text_len.
 * Spans are offsets into text; body_off + body_len <= text_len.
 */
struct offload_req {
  uint64_t id;          /* chosen by the agent, echoed by the response */
  uint32_t text_len;
  uint16_t field_count;
  uint8_t method;       /* OFFLOAD_METHOD_* */
  uint8_t version_minor;/* HTTP/1.<minor> */
  struct offload_span method_text;
  struct offload_span target;
  uint32_t body_off;
  uint32_t body_len;
  uint32_t flags;       /* OFFLOAD_REQ_F_* */
  uint32_t reserved_;
};

#define OFFLOAD_LENGTH_UNKNOWN UINT64_MAX

/*
 * OFFLOAD_REC_RESPONSE_HEAD payload (first record of a response):
 *   struct offload_resp
 *   struct offload_field fields[field_count]
 *   uint8_t text[text_len]   field names and values
 *   uint8_t body[body_len]   the first body bytes
 * record len == 8 + sizeof(offload_resp) + 16 * field_count + text_len + body_len.
 * Framing fields (Content-Length, Transfer-Encoding, Connection) are not sent:
 * content_length says the total body length, or OFFLOAD_LENGTH_UNKNOWN.
 * Interim responses (e.g. 103 Early Hints) come first, each a HEAD record with
 * a 1xx status, no body and no OFFLOAD_REC_F_END; the agent passes them to
 * HTTP/1.1 clients (100 and HTTP/1.0 clients: dropped). A 1xx HEAD record
 * with OFFLOAD_REC_F_END, or status 101, cannot end a response: the agent
 * answers 502.
 */
struct offload_resp {
  uint64_t id;             /* the request's id */
  uint64_t content_length; /* total body bytes, or OFFLOAD_LENGTH_UNKNOWN */
  uint16_t status;         /* 100..999 */
  uint16_t field_count;
  uint32_t text_len;
  uint32_t body_len;
  uint32_t reserved_;
};

/*
 * OFFLOAD_REC_RESPONSE_BODY payload: struct offload_resp_body, then the body
 * bytes up to the end of the record. OFFLOAD_REC_RESPONSE_ABORT payload:
 * struct offload_resp_body only (the agent fails the client's response).
 */
struct offload_resp_body {
  uint64_t id;
};

/* ---- attach handshake (SOCK_SEQPACKET messages) ------------------------- */

struct offload_hello {     /* server -> agent */
  uint64_t magic;          /* OFFLOAD_RING_MAGIC */
  uint32_t version;        /* OFFLOAD_RING_VERSION */
  uint32_t channels_wanted;/* one per worker; the agent may grant fewer */
  uint32_t pid;
  uint32_t reserved_;
};

struct offload_welcome {   /* agent -> server, with the fds */
  uint64_t magic;
  uint32_t version;
  int32_t status;          /* 0, or a negative errno: -EBUSY (a server is attached),
                              -EPROTO (bad hello), -ENOMEM (no region) */
  uint32_t channel_count;  /* granted; fds: 1 + 2 * channel_count */
  uint32_t ring_bytes;
  uint64_t region_bytes;
};

OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_side) == 64, "side line");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_region_header) == 192, "region header");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_ring_prod) == 64, "producer line");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_ring_cons) == 64, "consumer line");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_ring_ctrl) == 128, "ring control");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_rec) == 8, "record header");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_field) == 16, "field index");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_req) == 48, "request record");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_resp) == 32, "response head record");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_hello) == 24, "hello");
OFFLOAD_RING_STATIC_ASSERT(sizeof(struct offload_welcome) == 32, "welcome");

/* Bytes of one channel for a given ring size. */
static inline uint64_t offload_ring_channel_bytes(uint32_t ring_bytes) {
  return 2u * sizeof(struct offload_ring_ctrl) + 2u * (uint64_t)ring_bytes;
}

/* Bytes a record of `len` occupies in the data area. */
static inline uint64_t offload_rec_span(uint32_t len) {
  return ((uint64_t)len + OFFLOAD_RING_ALIGN - 1u) & ~(uint64_t)(OFFLOAD_RING_ALIGN - 1u);
}

/* The shared index words, accessed with GCC/Clang atomic builtins so the
 * same code is C and C++ (other languages: any acquire/release 64-bit and
 * 32-bit atomic on these addresses). */
static inline uint64_t offload_load_acquire_u64(const uint64_t* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void offload_store_release_u64(uint64_t* p, uint64_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint32_t offload_load_relaxed_u32(const uint32_t* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void offload_store_relaxed_u32(uint32_t* p, uint32_t v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline void offload_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#ifdef __cplusplus
}
#endif

#endif /* OFFLOAD_RING_H */
