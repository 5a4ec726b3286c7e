// The board shard 0's health checks publish on and the other shards follow:
// every result reaches a follower once, in the order it was published.
#include <doctest/doctest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "upstream/probe_board.h"

using offload::ProbeBoard;

namespace {

std::vector<bool> follow(const ProbeBoard& board, uint16_t& seen) {
  std::vector<bool> got;
  board.replay(seen, [&](bool ok) { got.push_back(ok); });
  return got;
}

}  // namespace

TEST_CASE("probe board: a follower gets each result once, oldest first") {
  ProbeBoard board;
  uint16_t seen = board.count();
  CHECK(follow(board, seen).empty());
  board.publish(true);
  board.publish(false);
  board.publish(false);
  CHECK(follow(board, seen) == std::vector<bool>{true, false, false});
  CHECK(follow(board, seen).empty());  // nothing new
  board.publish(true);
  CHECK(follow(board, seen) == std::vector<bool>{true});
}

TEST_CASE("probe board: a follower that starts late sees only what comes after, and the count wraps") {
  ProbeBoard board;
  for (int i = 0; i < 70000; ++i) board.publish(i % 2 == 0);  // past the 16-bit count
  uint16_t seen = board.count();
  board.publish(false);
  board.publish(true);
  CHECK(follow(board, seen) == std::vector<bool>{false, true});
}

TEST_CASE("probe board: a follower more than kKept behind gets the newest kKept") {
  ProbeBoard board;
  uint16_t seen = board.count();
  for (uint32_t i = 0; i < ProbeBoard::kKept + 10; ++i) board.publish(i >= 10);  // ten failures, then successes
  std::vector<bool> got = follow(board, seen);
  CHECK(got.size() == ProbeBoard::kKept);
  CHECK(got == std::vector<bool>(ProbeBoard::kKept, true));
}

TEST_CASE("probe board: two publishers at once (a reload's overlap) lose no result") {
  ProbeBoard board;
  const uint16_t start = board.count();
  auto publish = [&] {
    for (int i = 0; i < 10000; ++i) board.publish(true);
  };
  std::thread a(publish), b(publish);
  a.join();
  b.join();
  CHECK(uint16_t(board.count() - start) == uint16_t(20000));
}
