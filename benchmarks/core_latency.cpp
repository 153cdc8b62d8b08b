// The benchmark's machine-state probe: two threads pinned to two CPUs bounce one cache line; the result is
// nanoseconds per round trip, or -1 (not Linux, a CPU that cannot be pinned, or no answer in time). On the
// 2-vCPU AMD VM of 2026-11-29 it read either ~60 ns or ~340 ns, and epochs run while it read ~340 ns were
// slow; our reading (README, Performance) is that the host then had the two vCPUs on distant cores.
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

using Clock = std::chrono::steady_clock;

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

// Spin until `ball` holds `value`; false once `give_up` has passed or `stop` is set. Yields now and then, so
// two threads that end up on one CPU still make progress (and the result then shows it: microseconds).
bool wait_for(const std::atomic<int64_t>& ball, int64_t value, const std::atomic<bool>& stop,
              Clock::time_point give_up) {
  for (int64_t spins = 1; ball.load(std::memory_order_acquire) != value; ++spins) {
    if (spins % 4096 == 0) {
      if (stop.load(std::memory_order_relaxed) || Clock::now() > give_up) return false;
      std::this_thread::yield();
    }
  }
  return true;
}

double core_round_trip_ns(int64_t cpu_a, int64_t cpu_b, double seconds) {
  alignas(64) std::atomic<int64_t> ball{0};  // a writes odd values, b answers each with the next even one
  alignas(64) std::atomic<bool> stop{false};
  std::atomic<bool> ok{true};
  double ns = -1.0;
  const Clock::time_point give_up =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds * 5 + 1));
  auto answer = [&] {
    if (!pin_to(cpu_b)) ok = false;
    for (int64_t value = 1; wait_for(ball, value, stop, give_up); value += 2)
      ball.store(value + 1, std::memory_order_release);
  };
  auto serve = [&] {
    if (!pin_to(cpu_a)) ok = false;
    const auto start = Clock::now();
    int64_t rounds = 0;
    while (ok && std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
      for (int i = 0; i < 100; ++i, ++rounds) {
        ball.store(2 * rounds + 1, std::memory_order_release);
        if (!wait_for(ball, 2 * rounds + 2, stop, give_up)) {
          ok = false;
          break;
        }
      }
    }
    if (rounds > 0) ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / rounds;
    stop = true;
  };
  std::thread b(answer);
  try {
    std::thread a(serve);
    a.join();
  } catch (...) {  // no second thread: stop the first before it is joined
    stop = true;
    ok = false;
  }
  b.join();
  return ok ? ns : -1.0;
}

}  // namespace

TORCH_LIBRARY(mnist_softmax_probe, m) {
  m.def("core_round_trip_ns(int cpu_a, int cpu_b, float seconds) -> float");
  m.impl("core_round_trip_ns", &core_round_trip_ns);
}
