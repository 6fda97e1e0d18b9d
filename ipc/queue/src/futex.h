// Cross-process wait/wake on a 32-bit word in shared memory. libstdc++'s atomic::wait uses
// private futexes that never wake another process, hence these shared (non-PRIVATE) ones.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace shmsched::ipc::detail {

// Sleeps while *word == expected, at most `timeout`. Returns on a wake, a change, a signal or the
// timeout; the caller re-checks its condition in every case.
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::chrono::nanoseconds timeout);

// Wakes up to `count` processes sleeping on `word`.
void futex_wake(std::atomic<std::uint32_t>* word, int count);

}  // namespace shmsched::ipc::detail
