#include "security/request_policy.h"

#include <strings.h>

#include "http/http_rewrite.h"

namespace offload {
namespace {

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

const char* refusal_name(Refusal r) {
  switch (r) {
    case Refusal::kAuthMissing: return "no token";
    case Refusal::kAuthWrong: return "wrong token";
    case Refusal::kMethod: return "method not allowed";
    case Refusal::kNone: break;
  }
  return "none";
}

bool same_secret(std::string_view given, std::string_view secret) {
  if (secret.empty()) return given.empty();  // never a configured token: they are checked non-empty
  // Every byte of `given` is compared, against the secret repeated: no early
  // exit, and the loop's length is the client's. A length difference is
  // folded into the same accumulator. The wrap is a select, not a division.
  unsigned diff = given.size() != secret.size() ? 1u : 0u;
  const size_t n = secret.size();
  size_t j = 0;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= unsigned(uint8_t(given[i]) ^ uint8_t(secret[j]));
    j = j + 1 == n ? 0 : j + 1;
  }
  return diff == 0;
}

RequestPolicy::RequestPolicy(const ListenerSecurity& security)
    : auth_(security.auth), header_(security.header), tokens_(security.tokens), methods_(security.methods) {
  if (auth_ == ListenerSecurity::Auth::kBearer) {
    missing_ = error_response_with(401, "WWW-Authenticate: Bearer\r\n", true);
    wrong_ = error_response_with(401, "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n", true);
  } else {
    // An API key has no challenge scheme: without one a 401 is not allowed.
    missing_ = wrong_ = error_response_with(403, "", true);
  }
  std::string allow;
  for (const auto& m : methods_) allow += (allow.empty() ? "" : ", ") + m;
  method_ = error_response_with(405, "Allow: " + allow + "\r\n", true);
}

// Checks every token, whether or not one matched already: the time does
// not say which token (or whether any) was close.
bool RequestPolicy::known_token(std::string_view given) const {
  bool known = false;
  for (const auto& t : tokens_) known |= same_secret(given, t);
  return known;
}

Refusal RequestPolicy::check_token(const http::Head& head, std::string_view msg) const {
  const http::HeaderField* field = nullptr;
  for (const auto& f : head.headers) {
    if (!same_name(f.name.in(msg), header_)) continue;
    if (field != nullptr) return Refusal::kAuthWrong;  // two: which one counts is ambiguous
    field = &f;
  }
  if (field == nullptr) return Refusal::kAuthMissing;
  std::string_view value = field->value.in(msg);
  if (auth_ == ListenerSecurity::Auth::kBearer) {
    constexpr std::string_view kScheme = "Bearer ";
    if (value.size() < kScheme.size() || !same_name(value.substr(0, kScheme.size()), kScheme))
      return Refusal::kAuthMissing;  // another scheme, or none: no bearer credentials
    value.remove_prefix(kScheme.size());
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (value.empty()) return Refusal::kAuthMissing;
  return known_token(value) ? Refusal::kNone : Refusal::kAuthWrong;
}

Refusal RequestPolicy::check(const http::Head& head, std::string_view msg) const {
  if (auth_ != ListenerSecurity::Auth::kNone) {
    Refusal r = check_token(head, msg);
    if (r != Refusal::kNone) return r;
  }
  // CONNECT is never in `methods`: the listener's connect_targets decide it.
  if (!methods_.empty() && head.method != http::Method::kConnect) {
    std::string_view method = head.method_text.in(msg);
    bool allowed = false;
    for (const auto& m : methods_) allowed = allowed || method == m;
    if (!allowed) return Refusal::kMethod;
  }
  return Refusal::kNone;
}

int RequestPolicy::status(Refusal r) const {
  switch (r) {
    case Refusal::kAuthMissing:
    case Refusal::kAuthWrong: return auth_ == ListenerSecurity::Auth::kBearer ? 401 : 403;
    case Refusal::kMethod: return 405;
    case Refusal::kNone: break;
  }
  return 0;
}

std::string_view RequestPolicy::response(Refusal r) const {
  switch (r) {
    case Refusal::kAuthMissing: return missing_;
    case Refusal::kAuthWrong: return wrong_;
    case Refusal::kMethod: return method_;
    case Refusal::kNone: break;
  }
  return {};
}

}  // namespace offload
