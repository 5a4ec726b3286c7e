/* A complete liboffload-server program in C: answers every request with a
 * greeting built from the X-Name field and the target.
 *   example_server NAME       (the agent runs with --upstream shm:NAME)
 * SIGTERM stops it cleanly (exit 0). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "offload/server_c.h"

static offload_server *g_server;

static void on_term(int sig) {
  (void)sig;
  offload_server_stop(g_server); /* async-signal-safe */
}

static void hello(void *ctx, const offload_request *req, offload_response *res) {
  char body[256];
  offload_str who = {"stranger", 8};
  offload_str target = offload_request_target(req);
  (void)ctx;
  offload_request_header(req, "x-name", 6, &who);
  int n = snprintf(body, sizeof body, "hello %.*s from C, you asked for %.*s\n", (int)who.len, who.ptr,
                   (int)target.len, target.ptr);
  offload_response_set_status(res, 200);
  offload_response_add_header(res, "Content-Type", 12, "text/plain", 10);
  offload_response_write(res, body, (size_t)n);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s NAME\n", argv[0]);
    return 2;
  }
  g_server = offload_server_new(argv[1]);
  if (g_server == NULL) return 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  int rc = offload_server_serve(g_server, hello, NULL, 2);
  if (rc != 0) fprintf(stderr, "example_server: %s\n", offload_server_error(g_server));
  offload_server_free(g_server);
  return rc == 0 ? 0 : 1;
}
