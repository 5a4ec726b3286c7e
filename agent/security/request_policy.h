// A listener's checks on a complete request head, before any upstream work:
// the authorization indicia (none, a bearer token or an API key in a
// configured field, compared in constant time) and the methods it serves.
// The request-target length is the parser's (Limits::target_bytes_max, set
// from the same table), refused while the head still arrives.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "http/http_parser.h"
#include "ops/config.h"

namespace offload {

// Why a request was refused here; the listener counts each.
enum class Refusal : uint8_t { kNone, kAuthMissing, kAuthWrong, kMethod };

// True when `given` equals `secret`. The time taken depends on the length of
// `given` only (the client's own input), never on where the two differ nor
// on the secret's bytes or length.
// For the decision log: "no token", "wrong token", "method not allowed".
const char* refusal_name(Refusal r);

bool same_secret(std::string_view given, std::string_view secret);

class RequestPolicy {
 public:
  explicit RequestPolicy(const ListenerSecurity& security);

  bool active() const { return auth_ != ListenerSecurity::Auth::kNone || !methods_.empty(); }
  // kNone: the request may go on. Else status() and response() say the answer.
  Refusal check(const http::Head& head, std::string_view msg) const;
  int status(Refusal r) const;
  // The whole error response, kept here so no request builds one: 401 with
  // WWW-Authenticate, 403, 405 with Allow. Ends the connection.
  std::string_view response(Refusal r) const;

 private:
  Refusal check_token(const http::Head& head, std::string_view msg) const;
  bool known_token(std::string_view given) const;

  ListenerSecurity::Auth auth_;
  std::string header_;
  std::vector<std::string> tokens_;
  std::vector<std::string> methods_;
  std::string missing_, wrong_, method_;  // the responses
};

}  // namespace offload
