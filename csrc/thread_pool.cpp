#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define PRUNECAL_PAUSE() _mm_pause()
#else
#define PRUNECAL_PAUSE() std::this_thread::yield()
#endif

namespace prunecal {

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads) {
    for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { loop(w); });
    for (auto& t : workers_) t.detach();  // never joined: see thread_pool.h
  }

  // Workers join a job only while it is open; the caller runs tasks too, then closes the job
  // and waits only for workers that joined (never for a worker the OS has not scheduled yet),
  // so an oversubscribed machine degrades to single-threaded speed, not to scheduler latency.
  void run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_.store(0);
    error_ = nullptr;
    closed_.store(false);  // publishes the fields above to workers that see it open
    {
      std::lock_guard<std::mutex> lk(mutex_);
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    work(0);
    closed_.store(true);
    for (int k = 0; active_.load() != 0; ++k) {
      if (k < 4096) PRUNECAL_PAUSE();
      else std::this_thread::yield();
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work(int worker) {
    for (;;) {
      const int64_t t = next_.fetch_add(1);
      if (t >= n_tasks_) break;
      try {
        (*fn_)(t, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_);
      }
    }
  }

  void loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t g;
      int k = 0;
      while ((g = generation_.load()) == seen) {
        // ~20 us of pause-spinning (back-to-back layer calls), yielding until 200 us, then sleep
        if (++k < 1024) {
          PRUNECAL_PAUSE();
          continue;
        }
        std::this_thread::yield();
        if (k % 16 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(200)) {
          std::unique_lock<std::mutex> lk(mutex_);
          cv_.wait(lk, [&] { return generation_.load() != seen; });
        }
      }
      seen = g;
      active_.fetch_add(1);  // seq_cst pairs with closed_ in run(): the caller waits for us or we see it closed
      if (!closed_.load()) work(worker);
      active_.fetch_sub(1);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_, error_mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> closed_{true};
  int64_t n_tasks_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  std::exception_ptr error_;
};

namespace {

struct PoolTable {
  std::mutex mutex;
  std::map<int, ThreadPool*> pools;  // leaked on purpose (see thread_pool.h)
};

std::atomic<PoolTable*> g_table{nullptr};

PoolTable& table() {
  static const bool registered = [] {
    g_table.store(new PoolTable());
#if defined(__unix__) || defined(__APPLE__)
    // The child of a fork has none of the worker threads: give it a fresh, empty table.
    pthread_atfork(nullptr, nullptr, [] { g_table.store(new PoolTable()); });
#endif
    return true;
  }();
  (void)registered;
  return *g_table.load();
}

ThreadPool& pool_for(int threads) {
  PoolTable& t = table();
  std::lock_guard<std::mutex> lk(t.mutex);
  auto it = t.pools.find(threads);
  if (it == t.pools.end()) it = t.pools.emplace(threads, new ThreadPool(threads)).first;
  return *it->second;
}

}  // namespace

void parallel_for(int threads, int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (threads <= 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  pool_for(threads).run(n_tasks, fn);
}

}  // namespace prunecal
