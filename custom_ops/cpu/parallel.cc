#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace tq::cpu {
namespace {

class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Only one job at a time; busy_ makes other callers (another session, a nested call) run inline.
  bool TryRun(int64_t n, const std::function<void(int64_t)>& fn) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true)) return false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      active_ = int(workers_.size());
      ++generation_;
    }
    cv_.notify_all();
    Work();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return active_ == 0; });
    fn_ = nullptr;
    busy_.store(false);
    return true;
  }

 private:
  void Work() {
    for (int64_t i; (i = next_.fetch_add(1)) < n_;) (*fn_)(i);
  }
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      Work();
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::atomic<bool> busy_{false};
};

Pool& pool() {
  // Leaked on purpose: joining threads from a static destructor at exit can deadlock.
  static Pool* p = new Pool(num_threads());
  return *p;
}

thread_local ExternalRunner t_run = nullptr;
thread_local void* t_ctx = nullptr;

bool own_pool_forced() {
  static const bool forced = std::getenv("TQ_ORT_NUM_THREADS") != nullptr;
  return forced;
}

}  // namespace

ScopedRunner::ScopedRunner(ExternalRunner run, void* ctx) : prev_run_(t_run), prev_ctx_(t_ctx) {
  t_run = run;
  t_ctx = ctx;
}

ScopedRunner::~ScopedRunner() {
  t_run = prev_run_;
  t_ctx = prev_ctx_;
}

int num_threads() {
  static const int n = [] {
    if (const char* e = std::getenv("TQ_ORT_NUM_THREADS")) {
      int v = std::atoi(e);
      if (v >= 1) return std::min(v, 256);
    }
    return std::max(1, int(std::thread::hardware_concurrency()));
  }();
  return n;
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (t_run && !own_pool_forced() && n > 1) {
    t_run(t_ctx, n, [](void* f, size_t i) { (*static_cast<const std::function<void(int64_t)>*>(f))(int64_t(i)); },
          const_cast<std::function<void(int64_t)>*>(&fn));
    return;
  }
  if (n == 1 || num_threads() == 1 || !pool().TryRun(n, fn)) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
}

}  // namespace tq::cpu
