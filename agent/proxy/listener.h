// Listening sockets: SO_REUSEPORT so every shard can accept on its own.
#pragma once

#include <string>

#include "ops/config.h"

namespace offload {

// Binds and listens; throws ConfigError naming the address on failure.
int open_listener(const SocketAddress& address, int backlog);

// "127.0.0.1:PORT" / "[::1]:PORT" of a bound socket (the real port for :0).
std::string local_address(int fd);
uint16_t local_port(int fd);

}  // namespace offload
