// Encoding and validated decoding of the bus records (layouts in ring.h).
//
// Decoders never trust the payload: every count, offset and length is copied
// out of shared memory once and checked against the payload before a view
// is made, so the views they return always lie inside the record (their
// bytes may still be changed by a hostile peer, never their bounds). Bytes
// that are checked are checked on a private copy (decode_response copies the
// head text; the server copies a request record before decode_request), so
// what was checked is what gets used: each side reads shared memory once.
// A decoder returns nullptr on success or a short reason the record is corrupt.
//
// Thread rules: pure functions; the `fields` vectors are caller-owned scratch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "offload/ring.h"
#include "offload/ring_queue.h"

namespace offload::ring {

struct Field {
  std::string_view name;
  std::string_view value;
};

// ---- requests (agent -> server) ----------------------------------------------

// A complete request as the agent hands it over. Spans are offsets into
// `head` (request line, fields, empty line, as forwarded); `body` is the
// decoded body (no chunked framing).
struct RequestOut {
  uint64_t id = 0;
  std::string_view head;
  std::string_view body;
  uint8_t method = OFFLOAD_METHOD_OTHER;
  uint8_t version_minor = 1;
  uint32_t flags = 0;
  offload_span method_text{};
  offload_span target{};
  std::span<const offload_field> fields;
};

// Payload bytes of the record for `r` (0 when it cannot be represented:
// too many fields or over 4 GiB).
uint64_t request_payload_bytes(const RequestOut& r);
// False when a span lies outside `head`. `payload` has request_payload_bytes().
bool encode_request(const RequestOut& r, uint8_t* payload);

struct RequestIn {
  uint64_t id = 0;
  uint8_t method = OFFLOAD_METHOD_OTHER;
  uint8_t version_minor = 1;
  uint32_t flags = 0;
  std::string_view method_text;
  std::string_view target;
  std::string_view text;  // head then body
  std::string_view body;
};
// Views into rec's payload: the server hands it a private copy of the record.
const char* decode_request(const Record& rec, RequestIn* out, std::vector<Field>* fields);

// ---- responses (server -> agent) ---------------------------------------------

// Field text and index for a response head, built by the server.
struct ResponseHeadOut {
  uint64_t id = 0;
  uint16_t status = 200;
  uint64_t content_length = OFFLOAD_LENGTH_UNKNOWN;
  std::string_view text;                   // names and values
  std::span<const offload_field> fields;   // spans into text
  std::string_view body;                   // first body bytes
};
uint64_t response_head_payload_bytes(const ResponseHeadOut& r);
void encode_response_head(const ResponseHeadOut& r, uint8_t* payload);

struct ResponsePiece {
  enum class Kind : uint8_t { kHead, kBody, kAbort };
  Kind kind = Kind::kHead;
  uint64_t id = 0;
  uint16_t status = 0;                                // kHead
  uint64_t content_length = OFFLOAD_LENGTH_UNKNOWN;   // kHead
  std::span<const Field> fields;                      // kHead
  std::string_view body;                              // kHead, kBody
  bool end = false;                                   // last piece of the response
};
// Also rejects field names that are not tokens, values with CR, LF, NUL or
// other controls, framing fields, and statuses outside 100..999: the agent
// copies these to clients. The field names and values are first copied to
// `text_copy` and checked there: out->fields view that private copy (stable
// whatever the peer writes to the ring afterwards); only out->body views the
// record (opaque bytes, read once by whoever copies them out).
const char* decode_response(const Record& rec, ResponsePiece* out, std::vector<Field>* fields,
                            std::string* text_copy);

// ASCII case-insensitive equality (field names), shared by both ends.
bool iequals(std::string_view a, std::string_view b);
// HTTP token / field-value checks shared by both ends.
bool is_token(std::string_view s);
bool is_field_value(std::string_view s);
// Content-Length, Transfer-Encoding, Connection: framing the agent owns.
bool is_framing_field(std::string_view name);

}  // namespace offload::ring
