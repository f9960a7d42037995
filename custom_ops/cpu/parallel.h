// Parallel loops for the kernels. The ORT adapters route them to the session's intra-op thread pool
// (KernelContext_ParallelFor) through a scoped hook; without one (or with TQ_ORT_NUM_THREADS set)
// a small persistent pool of our own runs them.
#pragma once
#include <cstdint>
#include <functional>

namespace tq::cpu {

// Threads of our own pool: TQ_ORT_NUM_THREADS if set (>= 1), else the hardware concurrency.
int num_threads();

// Runs fn(task) for task in [0, n) and returns when all are done. fn must not throw. A nested or
// concurrent call on our pool runs inline, serially.
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Runs n tasks on an external pool: call(ctx, n, trampoline, arg) must invoke trampoline(arg, i) for
// every i in [0, n) and return when done.
using ExternalRunner = void (*)(void* ctx, int64_t n, void (*trampoline)(void*, size_t), void* arg);

// While alive (on this thread), parallel_for uses the external runner, unless TQ_ORT_NUM_THREADS is set.
class ScopedRunner {
 public:
  ScopedRunner(ExternalRunner run, void* ctx);
  ~ScopedRunner();
  ScopedRunner(const ScopedRunner&) = delete;
  ScopedRunner& operator=(const ScopedRunner&) = delete;

 private:
  ExternalRunner prev_run_;
  void* prev_ctx_;
};

}  // namespace tq::cpu
