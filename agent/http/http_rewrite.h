// The heads the proxy writes: the request it forwards upstream, the response
// head it gives the client, and the error responses it makes itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "http/http_parser.h"

namespace offload {

struct ForwardInfo {
  std::string_view client_ip;     // for X-Forwarded-For / Forwarded
  std::string_view default_host;  // Host for an HTTP/1.0 request without one
  bool upgrade = false;           // an Upgrade request: its Upgrade field and "Connection: upgrade" go on
};

// Writes the upstream request head into out[0, cap): the request line in
// HTTP/1.1, every end-to-end field of `head` except Content-Length, Expect and
// X-Forwarded-For (which are rewritten), X-Forwarded-For with the client
// appended, Forwarded with for= appended, and Via. The head is left open: the
// body's length is known only once the whole body is in (a chunked body is
// forwarded de-chunked), so finish_upstream_request_head() closes it.
// Returns the length, or 0 if it does not fit.
size_t write_upstream_request_head(const http::Head& head, std::string_view msg,
                                   const ForwardInfo& info, char* out, size_t cap);

// Appends "Content-Length: N" (when there is a body) and the final CRLF to a
// head of `len` bytes. Returns the new length, or 0 if it does not fit.
size_t finish_upstream_request_head(char* out, size_t len, size_t cap, bool has_body,
                                    uint64_t body_bytes);

// Writes the client's response head: "HTTP/1.1 status reason", every
// end-to-end field, Via, then the framing of the body as the agent sends it
// (the body is passed through as it came): Content-Length, Transfer-Encoding:
// chunked, or neither when the close ends the body. The upstream's own
// framing fields are not copied, so a Connection option naming them cannot
// strip the framing. "Connection: close" when `close` (or when the body ends
// with the connection), "Connection: keep-alive" for an HTTP/1.0 client that
// keeps it. With `dechunked` the body goes out decoded and ended by the close.
// Returns the length, or 0 if it does not fit.
size_t write_client_response_head(const http::Head& head, std::string_view msg, bool close,
                                  bool client_http10, bool dechunked, char* out, size_t cap);

// Writes an interim (1xx) response head for an HTTP/1.1 client: the status
// line and its end-to-end fields, no framing (a 1xx has no body). Returns the
// length, or 0 if it does not fit.
size_t write_interim_head(const http::Head& head, std::string_view msg, char* out, size_t cap);

// The reason phrase of a status code ("OK", "Not Found"), or "Unknown".
std::string_view reason_phrase(int status);

// A head field the ring delivered (name and value already validated).
struct FieldView {
  std::string_view name;
  std::string_view value;
};

// The client's response head for a response that came over the ring: the
// agent owns the framing, so it writes Content-Length (length known),
// Transfer-Encoding: chunked (unknown, HTTP/1.1 client) or nothing (the
// close ends the body), and Connection. Returns the length, 0 if it does
// not fit.
size_t write_ring_response_head(int status, const FieldView* fields, size_t field_count,
                                bool length_known, uint64_t content_length, bool chunked,
                                bool close, bool client_http10, char* out, size_t cap);

// A complete error response made by the agent (status 400..505), with a short
// text body. `close` adds "Connection: close".
std::string_view error_response(int status, bool close);

// The same with header fields of its own before the body ("Retry-After:
// 1\r\n", "Allow: GET, HEAD\r\n"), each ended by CRLF: made per use.
std::string error_response_with(int status, std::string_view fields, bool close);

}  // namespace offload
