#include "thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#endif
#if defined(__unix__) && !defined(__APPLE__)
#include <link.h>  // dl_iterate_phdr
#endif
#include <cstdlib>
#include <cstring>
#include <string>
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define PRUNECAL_PAUSE() _mm_pause()
#else
#define PRUNECAL_PAUSE() std::this_thread::yield()
#endif

namespace prunecal {
namespace {

// One job's tasks, handed out dynamically to whoever works on it (a pool's workers, or an
// OpenMP team's members); the first exception stops the handing out and is kept for the caller.
struct TaskQueue {
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t n_tasks = 0;
  std::atomic<int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;

  void reset(const std::function<void(int64_t, int)>& f, int64_t n) {
    fn = &f;
    n_tasks = n;
    next.store(0);
    error = nullptr;
  }
  void work(int worker) {
    for (;;) {
      const int64_t t = next.fetch_add(1);
      if (t >= n_tasks) break;
      try {
        (*fn)(t, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n_tasks);
      }
    }
  }
};

}  // namespace

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
    job_.reset(fn, n_tasks);
    closed_.store(false);  // publishes the fields above to workers that see it open
    {
      std::lock_guard<std::mutex> lk(mutex_);
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    job_.work(0);
    closed_.store(true);
    for (int k = 0; active_.load() != 0; ++k) {
      if (k < 4096) PRUNECAL_PAUSE();
      else std::this_thread::yield();
    }
    job_.fn = nullptr;
    if (job_.error) std::rethrow_exception(job_.error);
  }

 private:

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
      if (!closed_.load()) job_.work(worker);
      active_.fetch_sub(1);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> closed_{true};
  TaskQueue job_;
};

namespace {

struct PoolTable {
  unsigned generation = 0;  // g_forks when it was made
  std::mutex mutex;
  std::map<int, ThreadPool*> pools;  // leaked on purpose (see thread_pool.h)
};

std::atomic<PoolTable*> g_table{nullptr};
// fork() children of this process so far (in this process's own line): the fork handler only
// counts (no allocation, no lock in the child); a table made before the count changed belongs
// to a parent whose threads the child does not have, and the next table() replaces it
std::atomic<unsigned> g_forks{0};

void register_fork_handler();  // (below: the one fork handler, for the pools and the runtime choice)

PoolTable& table() {
  for (;;) {
    PoolTable* t = g_table.load();
    const unsigned gen = g_forks.load();
    if (t && t->generation == gen) return *t;
    register_fork_handler();  // (before the first table: a fork after it must be counted)
    auto* fresh = new PoolTable();  // (the old table and its pools are leaked: see thread_pool.h)
    fresh->generation = gen;
    if (g_table.compare_exchange_strong(t, fresh)) return *fresh;
    delete fresh;
  }
}

ThreadPool& pool_for(int threads) {
  PoolTable& t = table();
  std::lock_guard<std::mutex> lk(t.mutex);
  auto it = t.pools.find(threads);
  if (it == t.pools.end()) it = t.pools.emplace(threads, new ThreadPool(threads)).first;
  return *it->second;
}

}  // namespace

// ---- the OpenMP runtime already in the process (torch's), used through its GNU ABI ----------
//
// torch runs its own ops on an OpenMP team whose idle threads spin for a while after each op. A
// second pool's threads then wait for a core those spinners hold: measured on 2 cores, a sparse
// training step's native convs ran no faster on 2 threads than on 1. Running our tasks on the
// same team (GOMP_parallel, exported by libgomp and, for compatibility, by LLVM's and Intel's
// runtimes) leaves one set of threads. The library is only looked up among those already loaded
// (RTLD_NOLOAD): this module never loads or links an OpenMP runtime itself.
namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpThreadNum = int (*)();

struct OpenMpRuntime {
  GompParallel parallel = nullptr;
  OmpThreadNum thread_num = nullptr;
  std::string library;  // file name of the library that holds it
};

enum class ThreadRuntime { Auto, Pool, OpenMp };  // PRUNECAL_THREAD_RUNTIME

ThreadRuntime parse_setting() {
  const char* e = std::getenv("PRUNECAL_THREAD_RUNTIME");
  const std::string v = e && e[0] ? e : "auto";
  if (v == "auto") return ThreadRuntime::Auto;
  if (v == "pool") return ThreadRuntime::Pool;
  if (v == "openmp") return ThreadRuntime::OpenMp;
  throw std::invalid_argument("PRUNECAL_THREAD_RUNTIME: expected auto, pool or openmp, got '" + v + "'");
}

// The process's choice, made once (thread_runtime_init, at module load): the setting. (Whether
// this process is a fork() child is g_forks != 0: libgomp is not fork-safe, its threads do not
// exist in the child, so a child uses the pool.)
struct RuntimeState {
  ThreadRuntime setting = ThreadRuntime::Auto;
};
RuntimeState& state() {
  static RuntimeState* s = [] {
    auto* st = new RuntimeState();  // (process lifetime)
    st->setting = parse_setting();
    register_fork_handler();
    return st;
  }();
  return *s;
}

// The child of a fork has none of the parent's threads: it gets a fresh, empty pool table (made
// by its first table()) and runs threaded calls on the pool, never on the OpenMP team (libgomp is
// not fork-safe). One handler, registered by whichever of the two is used first; it only
// increments an atomic counter (async-signal-safe: nothing allocated or locked in the child).
void register_fork_handler() {
  static const bool registered = [] {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(nullptr, nullptr, [] { g_forks.fetch_add(1); });
#endif
    return true;
  }();
  (void)registered;
}

#if defined(__unix__) && !defined(__APPLE__)
bool take(void* handle, OpenMpRuntime* r) {
  if (!handle) return false;
  r->parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  r->thread_num = reinterpret_cast<OmpThreadNum>(dlsym(handle, "omp_get_thread_num"));
  Dl_info info;
  if (!r->parallel || !r->thread_num || !dladdr(reinterpret_cast<void*>(r->parallel), &info)) return false;
  const std::string path = info.dli_fname ? info.dli_fname : "?";
  r->library = path.substr(path.find_last_of('/') + 1);
  return true;
}

int add_openmp_candidate(dl_phdr_info* info, size_t, void* data) {
  const std::string path = info->dlpi_name ? info->dlpi_name : "";
  const std::string base = path.substr(path.find_last_of('/') + 1);
  for (const char* prefix : {"libgomp", "libomp", "libiomp"})
    if (base.rfind(prefix, 0) == 0) static_cast<std::vector<std::string>*>(data)->push_back(path);
  return 0;
}

// torch's runtime first: a symbol looked up through libtorch_cpu's handle resolves in its own
// dependencies (whatever the wheel renamed its libgomp to, and whichever other copy is loaded);
// else any OpenMP runtime among the loaded libraries. Nothing is loaded (RTLD_NOLOAD).
OpenMpRuntime find_openmp() {
  OpenMpRuntime r;
  if (take(dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD), &r)) return r;
  std::vector<std::string> loaded;
  dl_iterate_phdr(add_openmp_candidate, &loaded);
  for (const std::string& lib : loaded)
    if (take(dlopen(lib.c_str(), RTLD_NOW | RTLD_NOLOAD), &r)) return r;
  return OpenMpRuntime{};
}

// How many libraries the process has loaded so far (glibc counts them for exactly this use).
unsigned long long loads_so_far() {
  unsigned long long adds = 0;
  dl_iterate_phdr([](dl_phdr_info* info, size_t, void* data) {
    *static_cast<unsigned long long*>(data) = info->dlpi_adds;
    return 1;  // (the first object carries the count)
  }, &adds);
  return adds;
}
#else
OpenMpRuntime find_openmp() { return {}; }
unsigned long long loads_so_far() { return 0; }
#endif

std::atomic<const OpenMpRuntime*> g_openmp{nullptr};

// The loaded runtime, or nullptr while none is loaded. Looked up again only once more
// libraries have been loaded since the last look (torch may be imported after this module's
// first call), so a process without one pays a mutex and a walk of the loaded-library list
// (dl_iterate_phdr, for its load counter) per threaded call, not a symbol search; once found, it
// is kept (torch never unloads it) and the cost is one atomic read.
const OpenMpRuntime* loaded_openmp() {
  const OpenMpRuntime* r = g_openmp.load(std::memory_order_acquire);
  if (r) return r;
  static std::mutex m;
  static unsigned long long searched_at = ~0ull;  // loads_so_far() at the last fruitless search
  std::lock_guard<std::mutex> lk(m);
  if ((r = g_openmp.load())) return r;
  const unsigned long long loads = loads_so_far();
  if (loads == searched_at) return nullptr;
  searched_at = loads;
  const OpenMpRuntime found = find_openmp();
  if (!found.parallel) return nullptr;
  r = new OpenMpRuntime(found);  // (process lifetime)
  g_openmp.store(r, std::memory_order_release);
  return r;
}

// The runtime a call with more than one thread runs on (nullptr: the pool).
const OpenMpRuntime* openmp_for_call() {
  RuntimeState& st = state();
  if (st.setting == ThreadRuntime::Pool || g_forks.load()) return nullptr;
  const OpenMpRuntime* r = loaded_openmp();
  if (!r && st.setting == ThreadRuntime::OpenMp)
    throw std::runtime_error("PRUNECAL_THREAD_RUNTIME=openmp: no OpenMP runtime is loaded in this process "
                             "(import torch first, or use auto / pool)");
  return r;
}

struct OmpJob {
  OmpThreadNum thread_num;
  TaskQueue* queue;
};

void omp_body(void* p) {  // every member of the team (nothing may escape the region: TaskQueue catches)
  const OmpJob& j = *static_cast<const OmpJob*>(p);
  j.queue->work(j.thread_num());
}

}  // namespace

void thread_runtime_init() { (void)state(); }

std::string thread_runtime() {
  const RuntimeState& st = state();
  if (st.setting == ThreadRuntime::Pool) return "pool";
  if (g_forks.load()) return "pool (a forked child)";
  if (const OpenMpRuntime* r = loaded_openmp()) return "openmp (" + r->library + ")";
  return st.setting == ThreadRuntime::OpenMp ? "none (openmp asked for, none loaded: threaded calls raise)" : "pool";
}

void parallel_for(int threads, int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_tasks <= 0) return;
  if (threads <= 1 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  if (const OpenMpRuntime* omp = openmp_for_call()) {
    // a team of `threads` (the caller is thread 0); nested in a team it runs on fewer: tasks are
    // handed out dynamically, so any team size computes the same tasks
    TaskQueue queue;
    queue.reset(fn, n_tasks);
    OmpJob job{omp->thread_num, &queue};
    omp->parallel(omp_body, &job, unsigned(std::min<int64_t>(threads, n_tasks)), 0);
    if (queue.error) std::rethrow_exception(queue.error);
    return;
  }
  pool_for(threads).run(n_tasks, fn);
}

}  // namespace prunecal
