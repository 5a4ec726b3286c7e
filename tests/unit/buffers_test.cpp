#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "proxy/buffers.h"

using offload::Block;
using offload::BlockChain;
using offload::BlockPool;

namespace {
std::string drain(BlockChain& chain) {
  std::string out;
  for (Block* b = chain.front(); b != nullptr; b = b->next) out.append(b->data() + b->head, b->readable());
  return out;
}
}  // namespace

TEST_CASE("block pool: bounded by its budget, reuses freed blocks first") {
  BlockPool pool(1024, 3 * 1024);
  Block* a = pool.get();
  Block* b = pool.get();
  Block* c = pool.get();
  REQUIRE(a != nullptr);
  REQUIRE(c != nullptr);
  CHECK(pool.get() == nullptr);  // budget spent
  pool.put(b);
  CHECK(pool.get() == b);        // LIFO
  pool.put(a);
  pool.put(b);
  pool.put(c);
  CHECK(pool.bytes_in_use() == 0);
}

TEST_CASE("block pool: free blocks nothing used for a period go back, the ones in use stay") {
  BlockPool pool(1024, 64 * 1024, 64);
  std::vector<Block*> burst;
  for (int i = 0; i < 10; ++i) burst.push_back(pool.get());
  for (Block* b : burst) pool.put(b);
  CHECK(pool.free_count() == 10);
  // The first period ends with the burst's blocks free; the period's
  // low-water mark was 0 (they were all taken), so none goes yet.
  CHECK(pool.release_idle() == 0);
  CHECK(pool.free_count() == 10);
  // Steady traffic of 3 blocks at a time: the 7 never needed go back.
  for (int round = 0; round < 5; ++round) {
    Block* x = pool.get();
    Block* y = pool.get();
    Block* z = pool.get();
    pool.put(x);
    pool.put(y);
    pool.put(z);
  }
  CHECK(pool.release_idle() == 7 * 1024);
  CHECK(pool.free_count() == 3);
  // Quieter periods: the rest go too; a block in use is never touched.
  Block* held = pool.get();
  pool.put(pool.get());  // 1 free at the lowest point, 2 at the end
  CHECK(pool.release_idle() == 1 * 1024);
  CHECK(pool.free_count() == 1);
  CHECK(pool.release_idle() == 1 * 1024);
  CHECK(pool.free_count() == 0);
  CHECK(pool.bytes_in_use() == 1024);
  held->tail = 1;  // still valid memory
  pool.put(held);
}

TEST_CASE("block chain: appends across blocks and consumes from the front") {
  BlockPool pool(8, 1024);
  BlockChain chain;
  std::string text = "the quick brown fox jumps";
  REQUIRE(chain.append(pool, text.data(), text.size()));
  CHECK(chain.bytes() == text.size());
  CHECK(drain(chain) == text);
  chain.consume(pool, 10);
  CHECK(drain(chain) == text.substr(10));
  iovec iov[8];
  int n = chain.fill_iovec(iov, 8);
  size_t total = 0;
  for (int i = 0; i < n; ++i) total += iov[i].iov_len;
  CHECK(total == text.size() - 10);
  chain.consume(pool, chain.bytes());
  CHECK(chain.empty());
  CHECK(chain.front() == nullptr);  // a loop over front() ends when the bytes do
  CHECK(pool.bytes_in_use() == 0);
}

TEST_CASE("block chain: consuming exactly a partly filled last block frees it") {
  BlockPool pool(16, 1024);
  BlockChain chain;
  REQUIRE(chain.append(pool, "abc", 3));
  chain.consume(pool, 3);
  CHECK(chain.front() == nullptr);
  CHECK(chain.back() == nullptr);
  CHECK(pool.bytes_in_use() == 0);
  REQUIRE(chain.append(pool, "de", 2));  // and the chain works on
  CHECK(chain.bytes() == 2);
  chain.clear(pool);
}

TEST_CASE("block chain: append fails cleanly when the pool is spent") {
  BlockPool pool(4, 8);
  BlockChain chain;
  CHECK_FALSE(chain.append(pool, "0123456789", 10));
  CHECK(chain.bytes() == 8);  // what fitted stays
  chain.clear(pool);
}

TEST_CASE("block chain: a head rewritten in place and a trimmed tail keep the byte count") {
  BlockPool pool(64, 1024);
  BlockChain chain;
  Block* b = chain.writable_tail(pool, 64);
  b->head = b->tail = 20;
  std::memcpy(b->data() + 20, "HEADbody+extra", 14);
  chain.commit(14);
  std::memcpy(b->data() + 16, "NEWHEAD!", 8);  // a longer head ending where the body starts
  chain.move_front_head(16);
  CHECK(chain.bytes() == 18);
  chain.trim_tail(6);
  CHECK(drain(chain) == "NEWHEAD!body");
  CHECK(chain.bytes() == 12);
  chain.clear(pool);
}
