// What the parser costs per request: a typical small GET head, a large
// browser-like head, the same small head trickling in byte by byte, a
// response head, and chunked bodies in MB/s.
//
//   build-http/bench/http/bench_http_parser [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "http/http_parser.h"

namespace {

using offload::http::BodyProgress;
using offload::http::Limits;
using offload::http::Parser;
using offload::http::Result;

// About 300 bytes: what curl or a load generator sends.
const std::string kGet300 =
    "GET /api/v1/items/12345?fields=name,price&lang=en HTTP/1.1\r\n"
    "Host: shop.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Connection: keep-alive\r\n"
    "X-Request-Id: 7f3c2a9e-5b1d-4e8f-9a6c-0d2b4e6f8a1c\r\n"
    "\r\n";

// About 1.5 KiB: a browser navigation with client hints and cookies.
const std::string kBrowser1500 =
    "GET /account/orders?page=2&sort=date_desc HTTP/1.1\r\n"
    "Host: www.shop.example.com\r\n"
    "Connection: keep-alive\r\n"
    "sec-ch-ua: \"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\", \"Not?A_Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    "Sec-Fetch-Site: same-origin\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Referer: https://www.shop.example.com/account/orders?page=1&sort=date_desc\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,de;q=0.7,fr;q=0.6\r\n"
    "Cookie: session_id=3f2a9c7e1b5d4f8a6c0e2d4b6f8a1c3e5d7f9b1a3c5e7f9d; "
    "csrftoken=Zk8pQ2mN7vX4rT1yW6uB9eH3jL5sD0aF2gK8cV1nM4bR7tY0; "
    "_ga=GA1.1.1234567890.1700000000; _ga_ABCDEF1234=GS1.1.1700000000.12.1.1700001234.0.0.0; "
    "_gid=GA1.2.987654321.1700000000; cart=%7B%22items%22%3A%5B%7B%22id%22%3A12345%2C%22qty%22"
    "%3A2%7D%2C%7B%22id%22%3A67890%2C%22qty%22%3A1%7D%5D%7D; theme=dark; "
    "consent=analytics%3Dtrue%26marketing%3Dfalse%26functional%3Dtrue; "
    "recently_viewed=12345%2C67890%2C11111%2C22222%2C33333%2C44444\r\n"
    "If-None-Match: W/\"5e1b-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d\"\r\n"
    "If-Modified-Since: Tue, 14 Nov 2023 08:12:31 GMT\r\n"
    "Cache-Control: max-age=0\r\n"
    "DNT: 1\r\n"
    "Priority: u=0, i\r\n"
    "\r\n";

const std::string kResponseHead =
    "HTTP/1.1 200 OK\r\n"
    "Server: demo\r\n"
    "Date: Tue, 14 Nov 2023 08:12:31 GMT\r\n"
    "Content-Type: application/json; charset=utf-8\r\n"
    "Content-Length: 1234\r\n"
    "Cache-Control: private, max-age=0\r\n"
    "ETag: \"5e1b-1a2b3c4d\"\r\n"
    "Vary: Accept-Encoding\r\n"
    "\r\n";

void parse_heads(benchmark::State& state, const std::string& msg, Parser::Kind kind) {
  Parser p(kind, Limits{});
  for (auto _ : state) {
    p.reset();
    Result r = p.parse_head(msg);
    benchmark::DoNotOptimize(r);
    if (r != Result::kComplete) state.SkipWithError("head did not parse");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(msg.size()));
  state.counters["head_bytes"] = double(msg.size());
}

void BM_Get300(benchmark::State& s) { parse_heads(s, kGet300, Parser::Kind::kRequest); }
void BM_Browser1500(benchmark::State& s) { parse_heads(s, kBrowser1500, Parser::Kind::kRequest); }
void BM_ResponseHead(benchmark::State& s) { parse_heads(s, kResponseHead, Parser::Kind::kResponse); }

// A slow client: the head arrives one byte per call. Resuming instead of
// re-scanning keeps this linear.
void BM_Get300Trickle(benchmark::State& state) {
  Parser p(Parser::Kind::kRequest, Limits{});
  for (auto _ : state) {
    p.reset();
    Result r = Result::kIncomplete;
    for (size_t n = 1; n <= kGet300.size() && r == Result::kIncomplete; ++n)
      r = p.parse_head(std::string_view(kGet300).substr(0, n));
    if (r != Result::kComplete) state.SkipWithError("head did not parse");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(kGet300.size()));
}

// Copies the decoded bytes out, as the proxy's sink does into its blocks.
struct CopySink {
  std::string out;
  size_t len = 0;
};
void copy_sink(void* ctx, const char* data, size_t len) {
  auto* c = static_cast<CopySink*>(ctx);
  std::memcpy(c->out.data() + c->len, data, len);
  c->len += len;
}

std::string chunked_body(size_t chunk) {
  std::string body;
  const std::string data(chunk, 'x');
  char size_line[32];
  for (size_t total = 0, i = 0; total < (1u << 20); total += chunk, ++i) {
    std::snprintf(size_line, sizeof size_line, "%zx%s\r\n", chunk, i % 4 == 0 ? ";ext=v" : "");
    body += size_line + data + "\r\n";
  }
  return body + "0\r\n\r\n";
}

// 1 MiB of body in chunks of range(0) bytes (a quarter with an extension);
// with `copy`, decoded bytes are copied out, else the sink is null (framing
// cost alone). Throughput is of the raw body bytes.
void chunked(benchmark::State& state, bool copy) {
  const std::string body = chunked_body(size_t(state.range(0)));
  const std::string head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  Limits limits;
  limits.body_bytes_max = 0;
  Parser p(Parser::Kind::kRequest, limits);
  CopySink sink;
  sink.out.resize(body.size());
  for (auto _ : state) {
    p.reset();
    sink.len = 0;
    if (p.parse_head(head) != Result::kComplete) state.SkipWithError("head did not parse");
    BodyProgress bp = copy ? p.parse_body(body, copy_sink, &sink) : p.parse_body(body, nullptr, nullptr);
    if (!bp.done || p.body_bytes() < (1u << 20)) state.SkipWithError("body did not parse");
    benchmark::DoNotOptimize(sink.out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(body.size()));
}

void BM_ChunkedBody(benchmark::State& s) { chunked(s, true); }
void BM_ChunkedFraming(benchmark::State& s) { chunked(s, false); }

}  // namespace

BENCHMARK(BM_Get300);
BENCHMARK(BM_Browser1500);
BENCHMARK(BM_ResponseHead);
BENCHMARK(BM_Get300Trickle);
BENCHMARK(BM_ChunkedBody)->Arg(256)->Arg(4096)->Arg(65536);
BENCHMARK(BM_ChunkedFraming)->Arg(256)->Arg(4096);

BENCHMARK_MAIN();
