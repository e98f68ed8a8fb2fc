// Round trip of one cache line between two threads (two cores), once a second: on a VM whose
// virtual CPUs the host moves between physical cores, the figure moves too, and so does the
// speed of anything that shares a batch-1 image between threads (docs/performance.md).
//
//   g++ -O2 -pthread scripts/core_round_trip.cpp -o /tmp/core_round_trip && /tmp/core_round_trip 20
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

alignas(64) std::atomic<long> ping{0};
alignas(64) std::atomic<long> pong{0};

int main(int argc, char** argv) {
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 10;
  const long n = 200000;  // round trips per sample
  for (int s = 0; s < seconds; ++s) {
    ping = 0, pong = 0;
    std::thread other([&] {
      for (long i = 1; i <= n; ++i) {
        while (ping.load(std::memory_order_acquire) != i) {
        }
        pong.store(i, std::memory_order_release);
      }
    });
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 1; i <= n; ++i) {
      ping.store(i, std::memory_order_release);
      while (pong.load(std::memory_order_acquire) != i) {
      }
    }
    const auto t1 = std::chrono::steady_clock::now();
    other.join();
    std::printf("%2d s: %.0f ns per round trip\n", s, std::chrono::duration<double, std::nano>(t1 - t0).count() / n);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
  }
  return 0;
}
