// The C ABI over offload::Server: opaque handles are the C++ objects.
#include "offload/server_c.h"

#include <cerrno>
#include <new>

#include "offload/server.h"

struct offload_server {
  offload::Server srv;
  explicit offload_server(const char* name) : srv(name != nullptr ? name : "") {}
};

namespace {

const offload::Request& cpp(const offload_request* r) { return *reinterpret_cast<const offload::Request*>(r); }
offload::Response& cpp(offload_response* r) { return *reinterpret_cast<offload::Response*>(r); }
offload_str cstr(std::string_view s) { return offload_str{s.data(), s.size()}; }

offload::Handler wrap(offload_handler_fn fn, void* ctx) {
  return [fn, ctx](const offload::Request& req, offload::Response& res) {
    fn(ctx, reinterpret_cast<const offload_request*>(&req), reinterpret_cast<offload_response*>(&res));
  };
}

}  // namespace

extern "C" {

offload_server* offload_server_new(const char* name) { return new (std::nothrow) offload_server(name); }
void offload_server_free(offload_server* srv) { delete srv; }

int offload_server_serve(offload_server* srv, offload_handler_fn fn, void* ctx, unsigned workers) {
  if (fn == nullptr) return -EINVAL;
  return srv->srv.serve(wrap(fn, ctx), workers);
}

void offload_server_stop(offload_server* srv) { srv->srv.stop(); }
const char* offload_server_error(const offload_server* srv) { return srv->srv.error().c_str(); }
uint64_t offload_server_requests(const offload_server* srv) { return srv->srv.requests_served(); }
int offload_server_attach(offload_server* srv, unsigned channels) { return srv->srv.attach(channels); }
unsigned offload_server_channels(const offload_server* srv) { return srv->srv.channel_count(); }
int offload_server_doorbell_fd(const offload_server* srv, unsigned ch) { return srv->srv.doorbell_fd(ch); }
void offload_server_detach(offload_server* srv) { srv->srv.detach(); }

int offload_server_serve_ready(offload_server* srv, unsigned ch, offload_handler_fn fn, void* ctx) {
  if (fn == nullptr) return -EINVAL;
  return srv->srv.serve_ready(ch, wrap(fn, ctx));
}

offload_str offload_request_method(const offload_request* req) { return cstr(cpp(req).method()); }
offload_str offload_request_target(const offload_request* req) { return cstr(cpp(req).target()); }
offload_str offload_request_body(const offload_request* req) { return cstr(cpp(req).body()); }
size_t offload_request_header_count(const offload_request* req) { return cpp(req).headers().size(); }

int offload_request_header_at(const offload_request* req, size_t i, offload_str* name, offload_str* value) {
  auto h = cpp(req).headers();
  if (i >= h.size()) return -ERANGE;
  *name = cstr(h[i].name);
  *value = cstr(h[i].value);
  return 0;
}

int offload_request_header(const offload_request* req, const char* name, size_t name_len, offload_str* value) {
  auto v = cpp(req).header(std::string_view(name, name_len));
  if (!v) return 0;
  *value = cstr(*v);
  return 1;
}

void offload_response_set_status(offload_response* res, int status) { cpp(res).set_status(status); }

int offload_response_send_interim(offload_response* res, int status) {
  return cpp(res).send_interim(status) ? 0 : -EINVAL;
}

int offload_response_add_header(offload_response* res, const char* name, size_t name_len, const char* value,
                                size_t value_len) {
  return cpp(res).add_header({name, name_len}, {value, value_len}) ? 0 : -EINVAL;
}

void offload_response_set_content_length(offload_response* res, uint64_t bytes) {
  cpp(res).set_content_length(bytes);
}

int offload_response_write(offload_response* res, const void* data, size_t len) {
  return cpp(res).write({static_cast<const char*>(data), len}) ? 0 : -EPIPE;
}

}  // extern "C"
