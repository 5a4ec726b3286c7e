// libFuzzer target: arbitrary bytes as the contents of a ring (its data area
// and the producer's index, after the consumer has been moved to an
// arbitrary position), read by the consumer and every record decoder.
// Any out-of-bounds read, crash or undefined behaviour is a finding.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "offload/ring_codec.h"
#include "offload/ring_queue.h"

namespace {

constexpr uint32_t kRingBytes = 4096;

// Reads every byte of a view so ASan checks its bounds.
uint64_t touch(std::string_view v) {
  uint64_t sum = 0;
  for (char c : v) sum += static_cast<unsigned char>(c);
  return sum;
}

uint64_t decode_all(const offload::ring::Record& rec) {
  static std::vector<offload::ring::Field> fields;
  static std::string text;
  uint64_t sum = 0;
  offload::ring::RequestIn req;
  if (offload::ring::decode_request(rec, &req, &fields) == nullptr) {
    sum += touch(req.method_text) + touch(req.target) + touch(req.text) + touch(req.body);
    for (auto& f : fields) sum += touch(f.name) + touch(f.value);
  }
  offload::ring::ResponsePiece piece;
  if (offload::ring::decode_response(rec, &piece, &fields, &text) == nullptr) {
    sum += touch(piece.body);
    for (auto& f : piece.fields) sum += touch(f.name) + touch(f.value);
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 10) return 0;
  // Exactly the mapped size, so ASan flags a read one byte past the ring.
  std::vector<uint8_t> mem(sizeof(offload_ring_ctrl) + kRingBytes);
  auto* ctrl = reinterpret_cast<offload_ring_ctrl*>(mem.data());
  uint8_t* ring = mem.data() + sizeof(offload_ring_ctrl);
  offload::ring::Producer prod;
  offload::ring::Consumer cons;
  prod.init(ctrl, ring, kRingBytes, -1);
  cons.init(ctrl, ring, kRingBytes, -1);

  // Move both ends to position 8 * data[0] with one honest record.
  uint32_t skip = data[0] * 8u;
  if (skip >= 16) {
    if (prod.try_reserve(skip - 8) == nullptr) std::abort();
    prod.commit(OFFLOAD_REC_REQUEST, 0, skip - 8);
    offload::ring::Record r;
    if (cons.peek(&r) != 1) std::abort();
    cons.release();
  }
  // The hostile part: the data area from the consumer's position on
  // (wrapping like ring contents), and the producer's index: usually "what
  // the input provides", sometimes any value near it, sometimes raw.
  size_t n = std::min<size_t>(size - 10, kRingBytes);
  for (size_t i = 0; i < n; ++i) ring[(skip + i) % kRingBytes] = data[10 + i];
  uint64_t base = skip >= 16 ? skip : 0;
  uint64_t head;
  std::memcpy(&head, data + 1, sizeof head);
  if ((data[9] & 3) == 0) head = base + (n & ~size_t{7});
  if ((data[9] & 3) == 1) head = base + head % (2 * kRingBytes);
  offload_store_release_u64(&ctrl->prod.head, head);

  volatile uint64_t sink = 0;
  for (int i = 0; i < 1024; ++i) {
    offload::ring::Record rec;
    int rc = cons.peek(&rec);
    if (rc <= 0) break;
    sink = sink + decode_all(rec);
    cons.release();
  }
  // The decoders on their own, with the whole input as a payload.
  for (uint16_t type = OFFLOAD_REC_REQUEST; type <= OFFLOAD_REC_RESPONSE_ABORT; ++type) {
    offload::ring::Record rec{type, data[9], data + 10, static_cast<uint32_t>(size - 10)};
    sink = sink + decode_all(rec);
  }
  (void)sink;
  return 0;
}
