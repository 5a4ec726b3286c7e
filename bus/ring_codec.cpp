#include "offload/ring_codec.h"

#include <cstring>
#include <string>

namespace offload::ring {

namespace {

constexpr uint64_t kFieldsMax = UINT16_MAX;

bool span_in(offload_span s, uint64_t size) { return uint64_t{s.off} + s.len <= size; }

std::string_view view(const uint8_t* text, offload_span s) {
  return {reinterpret_cast<const char*>(text) + s.off, s.len};
}

// Copies the field index out of shared memory, checking each span. The views
// point into `text`, which the caller chose (the record, or a private copy).
const char* decode_fields(const uint8_t* index, uint32_t count, const uint8_t* text, uint64_t text_len,
                          std::vector<Field>* fields) {
  fields->clear();
  for (uint32_t i = 0; i < count; ++i) {
    auto f = snapshot<offload_field>(index + i * sizeof(offload_field));
    if (!span_in(f.name, text_len) || !span_in(f.value, text_len)) return "field span outside the record";
    fields->push_back({view(text, f.name), view(text, f.value)});
  }
  return nullptr;
}

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum && std::strchr("!#$%&'*+-.^_`|~", c) == nullptr) return false;
    if (c == '\0') return false;
  }
  return true;
}

bool is_field_value(std::string_view s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  return true;
}

bool is_framing_field(std::string_view name) {
  return iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
         iequals(name, "connection");
}

// ---- requests -----------------------------------------------------------------

uint64_t request_payload_bytes(const RequestOut& r) {
  if (r.fields.size() > kFieldsMax) return 0;
  uint64_t n = sizeof(offload_req) + r.fields.size() * sizeof(offload_field) + r.head.size() + r.body.size();
  return n > UINT32_MAX - 64 ? 0 : n;
}

bool encode_request(const RequestOut& r, uint8_t* payload) {
  uint64_t head_len = r.head.size();
  if (!span_in(r.method_text, head_len) || !span_in(r.target, head_len)) return false;
  for (const offload_field& f : r.fields)
    if (!span_in(f.name, head_len) || !span_in(f.value, head_len)) return false;
  offload_req h{};
  h.id = r.id;
  h.text_len = static_cast<uint32_t>(r.head.size() + r.body.size());
  h.field_count = static_cast<uint16_t>(r.fields.size());
  h.method = r.method;
  h.version_minor = r.version_minor;
  h.method_text = r.method_text;
  h.target = r.target;
  h.body_off = static_cast<uint32_t>(r.head.size());
  h.body_len = static_cast<uint32_t>(r.body.size());
  h.flags = r.flags;
  uint8_t* p = payload;
  std::memcpy(p, &h, sizeof h);
  p += sizeof h;
  if (!r.fields.empty()) std::memcpy(p, r.fields.data(), r.fields.size_bytes());
  p += r.fields.size_bytes();
  std::memcpy(p, r.head.data(), r.head.size());
  if (!r.body.empty()) std::memcpy(p + r.head.size(), r.body.data(), r.body.size());
  return true;
}

const char* decode_request(const Record& rec, RequestIn* out, std::vector<Field>* fields) {
  if (rec.type != OFFLOAD_REC_REQUEST) return "not a request record";
  if (rec.payload_len < sizeof(offload_req)) return "request record too short";
  auto h = snapshot<offload_req>(rec.payload);
  uint64_t index_bytes = uint64_t{h.field_count} * sizeof(offload_field);
  if (sizeof(offload_req) + index_bytes + h.text_len != rec.payload_len) return "request lengths do not add up";
  const uint8_t* text = rec.payload + sizeof(offload_req) + index_bytes;
  if (!span_in(h.method_text, h.text_len) || !span_in(h.target, h.text_len)) return "request span outside the record";
  if (uint64_t{h.body_off} + h.body_len > h.text_len) return "request body outside the record";
  if (const char* err = decode_fields(rec.payload + sizeof(offload_req), h.field_count, text, h.text_len, fields))
    return err;
  out->id = h.id;
  out->method = h.method;
  out->version_minor = h.version_minor;
  out->flags = h.flags;
  out->method_text = view(text, h.method_text);
  out->target = view(text, h.target);
  out->text = view(text, {0, h.text_len});
  out->body = view(text, {h.body_off, h.body_len});
  return nullptr;
}

// ---- responses ----------------------------------------------------------------

uint64_t response_head_payload_bytes(const ResponseHeadOut& r) {
  if (r.fields.size() > kFieldsMax) return 0;
  uint64_t n = sizeof(offload_resp) + r.fields.size() * sizeof(offload_field) + r.text.size() + r.body.size();
  return n > UINT32_MAX - 64 ? 0 : n;
}

void encode_response_head(const ResponseHeadOut& r, uint8_t* payload) {
  offload_resp h{};
  h.id = r.id;
  h.content_length = r.content_length;
  h.status = r.status;
  h.field_count = static_cast<uint16_t>(r.fields.size());
  h.text_len = static_cast<uint32_t>(r.text.size());
  h.body_len = static_cast<uint32_t>(r.body.size());
  uint8_t* p = payload;
  std::memcpy(p, &h, sizeof h);
  p += sizeof h;
  if (!r.fields.empty()) std::memcpy(p, r.fields.data(), r.fields.size_bytes());
  p += r.fields.size_bytes();
  if (!r.text.empty()) std::memcpy(p, r.text.data(), r.text.size());
  if (!r.body.empty()) std::memcpy(p + r.text.size(), r.body.data(), r.body.size());
}

namespace {

const char* decode_response_head(const Record& rec, ResponsePiece* out, std::vector<Field>* fields,
                                 std::string* text_copy) {
  if (rec.payload_len < sizeof(offload_resp)) return "response head record too short";
  auto h = snapshot<offload_resp>(rec.payload);
  uint64_t index_bytes = uint64_t{h.field_count} * sizeof(offload_field);
  if (sizeof(offload_resp) + index_bytes + h.text_len + h.body_len != rec.payload_len)
    return "response head lengths do not add up";
  if (h.status < 100 || h.status > 999) return "response status outside 100..999";
  const uint8_t* text = rec.payload + sizeof(offload_resp) + index_bytes;
  // Copy first, then check the copy: a server changing the shared bytes
  // after the check cannot reach the client (the agent writes the copy).
  text_copy->assign(reinterpret_cast<const char*>(text), h.text_len);
  asm volatile("" ::: "memory");
  const auto* own = reinterpret_cast<const uint8_t*>(text_copy->data());
  if (const char* err = decode_fields(rec.payload + sizeof(offload_resp), h.field_count, own, h.text_len, fields))
    return err;
  for (const Field& f : *fields) {
    if (!is_token(f.name) || !is_field_value(f.value)) return "response field with invalid characters";
    if (is_framing_field(f.name)) return "response carries a framing field";
  }
  if (h.content_length != OFFLOAD_LENGTH_UNKNOWN && h.body_len > h.content_length)
    return "response body longer than its content length";
  out->kind = ResponsePiece::Kind::kHead;
  out->id = h.id;
  out->status = h.status;
  out->content_length = h.content_length;
  out->fields = *fields;
  out->body = view(text, {h.text_len, h.body_len});
  return nullptr;
}

}  // namespace

const char* decode_response(const Record& rec, ResponsePiece* out, std::vector<Field>* fields,
                            std::string* text_copy) {
  *out = ResponsePiece{};
  out->end = (rec.flags & OFFLOAD_REC_F_END) != 0;
  switch (rec.type) {
    case OFFLOAD_REC_RESPONSE_HEAD:
      return decode_response_head(rec, out, fields, text_copy);
    case OFFLOAD_REC_RESPONSE_BODY: {
      if (rec.payload_len < sizeof(offload_resp_body)) return "response body record too short";
      out->kind = ResponsePiece::Kind::kBody;
      out->id = snapshot<offload_resp_body>(rec.payload).id;
      out->body = {reinterpret_cast<const char*>(rec.payload) + sizeof(offload_resp_body),
                   rec.payload_len - sizeof(offload_resp_body)};
      return nullptr;
    }
    case OFFLOAD_REC_RESPONSE_ABORT:
      if (rec.payload_len != sizeof(offload_resp_body)) return "response abort record of wrong size";
      out->kind = ResponsePiece::Kind::kAbort;
      out->id = snapshot<offload_resp_body>(rec.payload).id;
      out->end = true;
      return nullptr;
    default:
      return "not a response record";
  }
}

}  // namespace offload::ring
