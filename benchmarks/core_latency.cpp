// The benchmark's machine-state probe: two threads pinned to two CPUs bounce one cache line; the result is
// nanoseconds per round trip. On the 2-vCPU AMD VM of 2026-11-29 it read ~60 ns or ~340 ns, and every epoch
// run while it read ~340 ns was slow (ours ~1.8x, the floor ~1.4x): the host had put the two vCPUs on
// distant cores, where moving data between the training threads costs more. train_speed.py records it after
// each round of epochs, so a run says which state each epoch ran in. Linux only (-1 elsewhere).
#include <torch/library.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

namespace {

bool pin_to(int64_t cpu) {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<int>(cpu), &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
#else
  (void)cpu;
  return false;
#endif
}

double core_round_trip_ns(int64_t cpu_a, int64_t cpu_b, double seconds) {
  alignas(64) std::atomic<int64_t> ball{0};  // a writes odd values, b answers with the next even one
  alignas(64) std::atomic<bool> stop{false};
  std::atomic<bool> pinned{true};
  double ns = -1.0;
  std::thread b([&] {
    if (!pin_to(cpu_b)) pinned = false;
    for (int64_t expect = 1; !stop.load(std::memory_order_relaxed);) {
      if (ball.load(std::memory_order_acquire) == expect) {
        ball.store(expect + 1, std::memory_order_release);
        expect += 2;
      }
    }
  });
  std::thread a([&] {
    if (!pin_to(cpu_a)) pinned = false;
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    int64_t rounds = 0;
    while (std::chrono::duration<double>(clock::now() - start).count() < seconds) {
      for (int i = 0; i < 1000; ++i, ++rounds) {
        ball.store(2 * rounds + 1, std::memory_order_release);
        while (ball.load(std::memory_order_acquire) != 2 * rounds + 2) {
        }
      }
    }
    ns = std::chrono::duration<double, std::nano>(clock::now() - start).count() / static_cast<double>(rounds);
    stop = true;
  });
  a.join();
  b.join();
  return pinned ? ns : -1.0;
}

}  // namespace

TORCH_LIBRARY(mnist_softmax_probe, m) {
  m.def("core_round_trip_ns(int cpu_a, int cpu_b, float seconds) -> float");
  m.impl("core_round_trip_ns", &core_round_trip_ns);
}
