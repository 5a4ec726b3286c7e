/*
 * liboffload-server, C ABI: serve requests from the offload agent's
 * shared-memory bus from C or any language with a C FFI. Same behaviour as
 * offload::Server (server.h). Strings are (pointer, length) pairs, not NUL-
 * terminated; they stay valid until the handler returns.
 *
 *   static void hello(void *ctx, const offload_request *req, offload_response *res) {
 *     offload_response_set_status(res, 200);
 *     offload_response_write(res, "hi\n", 3);
 *   }
 *   offload_server *srv = offload_server_new("app");
 *   offload_server_serve(srv, hello, NULL, 4);   // until offload_server_stop()
 *   offload_server_free(srv);
 *
 * Functions returning int return 0 (or a count) on success and a negative
 * errno on failure; offload_server_error() says why.
 */
#ifndef OFFLOAD_SERVER_C_H
#define OFFLOAD_SERVER_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct offload_server offload_server;
typedef struct offload_request offload_request;
typedef struct offload_response offload_response;

typedef struct offload_str {
  const char *ptr;
  size_t len;
} offload_str;

typedef void (*offload_handler_fn)(void *ctx, const offload_request *req, offload_response *res);

/* NULL only when out of memory. `name` is the bus NAME (agent: shm:NAME). */
offload_server *offload_server_new(const char *name);
void offload_server_free(offload_server *srv);
/* Serves on `workers` threads until offload_server_stop(); re-attaches when the
 * agent restarts. 0 after stop, -errno for a fatal error (bad name). */
int offload_server_serve(offload_server *srv, offload_handler_fn fn, void *ctx, unsigned workers);
/* Any thread, async-signal-safe. */
void offload_server_stop(offload_server *srv);
const char *offload_server_error(const offload_server *srv);
uint64_t offload_server_requests(const offload_server *srv);

/* Own event loop: attach, poll each channel's doorbell fd for POLLIN, then
 * call serve_ready (returns requests served, 0 = armed, -EPIPE = the agent
 * went away: detach and attach again). */
int offload_server_attach(offload_server *srv, unsigned channels);
unsigned offload_server_channels(const offload_server *srv);
int offload_server_doorbell_fd(const offload_server *srv, unsigned ch);
int offload_server_serve_ready(offload_server *srv, unsigned ch, offload_handler_fn fn, void *ctx);
void offload_server_detach(offload_server *srv);

/* The request. */
offload_str offload_request_method(const offload_request *req);
offload_str offload_request_target(const offload_request *req);
offload_str offload_request_body(const offload_request *req);
size_t offload_request_header_count(const offload_request *req);
/* 0, or -ERANGE when i >= header_count. */
int offload_request_header_at(const offload_request *req, size_t i, offload_str *name, offload_str *value);
/* 1 and *value set when a field `name` exists (case-insensitive), else 0. */
int offload_request_header(const offload_request *req, const char *name, size_t name_len, offload_str *value);

/* The response (status 200 unless set). A status outside 200..999 (1xx
 * included: see send_interim) turns the response into a 500. */
void offload_response_set_status(offload_response *res, int status);
/* An interim response now (102..199 but 101, e.g. 103 Early Hints) with the
 * headers added so far, which are then cleared. 0, or -EINVAL. */
int offload_response_send_interim(offload_response *res, int status);
/* 0, or -EINVAL for an invalid or framing field (Content-Length, ...). */
int offload_response_add_header(offload_response *res, const char *name, size_t name_len, const char *value,
                                size_t value_len);
void offload_response_set_content_length(offload_response *res, uint64_t bytes);
/* 0, or -EPIPE when the response can no longer be delivered. */
int offload_response_write(offload_response *res, const void *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* OFFLOAD_SERVER_C_H */
