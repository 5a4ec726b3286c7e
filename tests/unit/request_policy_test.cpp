// A listener's request checks: tokens (bearer, API key) and methods.
#include <doctest/doctest.h>

#include <string>

#include "http/http_parser.h"
#include "security/request_policy.h"

using offload::ListenerSecurity;
using offload::Refusal;
using offload::RequestPolicy;
namespace http = offload::http;

namespace {

// Parses `head` and runs the policy on it.
Refusal check(const RequestPolicy& p, const std::string& head) {
  http::Parser parser(http::Parser::Kind::kRequest, http::Limits{});
  REQUIRE(parser.parse_head(head) == http::Result::kComplete);
  return p.check(parser.head(), head);
}

ListenerSecurity bearer() {
  ListenerSecurity s;
  s.auth = ListenerSecurity::Auth::kBearer;
  s.header = "Authorization";
  s.tokens = {"tok-one", "tok-two-longer"};
  return s;
}

}  // namespace

TEST_CASE("same_secret: equal only when every byte and the length match") {
  CHECK(offload::same_secret("abc", "abc"));
  CHECK_FALSE(offload::same_secret("abd", "abc"));
  CHECK_FALSE(offload::same_secret("ab", "abc"));
  CHECK_FALSE(offload::same_secret("abcabc", "abc"));  // the secret repeated is still not it
  CHECK_FALSE(offload::same_secret("", "abc"));
  CHECK_FALSE(offload::same_secret("x", ""));
  CHECK(offload::same_secret("", ""));
}

TEST_CASE("bearer: a known token passes; none, another scheme or a wrong one gets 401 with a challenge") {
  RequestPolicy p(bearer());
  CHECK(p.active());
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-one\r\n\r\n") == Refusal::kNone);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nauthorization: bearer tok-two-longer\r\n\r\n") == Refusal::kNone);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n") == Refusal::kAuthMissing);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic dG9rLW9uZQ==\r\n\r\n") == Refusal::kAuthMissing);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer\r\n\r\n") == Refusal::kAuthMissing);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-onf\r\n\r\n") == Refusal::kAuthWrong);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-on\r\n\r\n") == Refusal::kAuthWrong);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-one2\r\n\r\n") == Refusal::kAuthWrong);
  // Two credentials: which one counts would be a guess.
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-one\r\nAuthorization: Bearer x\r\n\r\n") ==
        Refusal::kAuthWrong);
  CHECK(p.status(Refusal::kAuthMissing) == 401);
  CHECK(p.status(Refusal::kAuthWrong) == 401);
  std::string missing(p.response(Refusal::kAuthMissing));
  CHECK(missing.rfind("HTTP/1.1 401 Unauthorized\r\n", 0) == 0);
  CHECK(missing.find("\r\nWWW-Authenticate: Bearer\r\n") != std::string::npos);
  CHECK(std::string(p.response(Refusal::kAuthWrong)).find("WWW-Authenticate: Bearer error=\"invalid_token\"") !=
        std::string::npos);
}

TEST_CASE("api key: in its own header; missing or wrong is 403") {
  ListenerSecurity s;
  s.auth = ListenerSecurity::Auth::kApiKey;
  s.header = "X-API-Key";
  s.tokens = {"k1"};
  RequestPolicy p(s);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k1\r\n\r\n") == Refusal::kNone);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: k2\r\n\r\n") == Refusal::kAuthWrong);
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k1\r\n\r\n") == Refusal::kAuthMissing);
  CHECK(p.status(Refusal::kAuthWrong) == 403);
  CHECK(std::string(p.response(Refusal::kAuthWrong)).rfind("HTTP/1.1 403 Forbidden\r\n", 0) == 0);
}

TEST_CASE("methods: only the listed ones, exactly; 405 names them in Allow") {
  ListenerSecurity s;
  s.methods = {"GET", "HEAD"};
  RequestPolicy p(s);
  CHECK(p.active());
  CHECK(check(p, "GET / HTTP/1.1\r\nHost: a\r\n\r\n") == Refusal::kNone);
  CHECK(check(p, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n") == Refusal::kNone);
  CHECK(check(p, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n") == Refusal::kMethod);
  CHECK(check(p, "GETX / HTTP/1.1\r\nHost: a\r\n\r\n") == Refusal::kMethod);
  CHECK(p.status(Refusal::kMethod) == 405);
  CHECK(std::string(p.response(Refusal::kMethod)).find("\r\nAllow: GET, HEAD\r\n") != std::string::npos);
  CHECK_FALSE(RequestPolicy(ListenerSecurity{}).active());
}
