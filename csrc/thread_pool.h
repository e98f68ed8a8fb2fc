// Threads of the native core: one set, never two. When an OpenMP runtime is already loaded in
// the process (torch's libgomp), tasks run on its team (through the GNU ABI, looked up at run
// time; this module never links OpenMP); otherwise on a small std::thread pool.
// PRUNECAL_THREAD_RUNTIME = auto (default: OpenMP when loaded, else the pool) | pool | openmp
// (an error while none is loaded); read once per process, at module load. A fork() child
// uses the pool (libgomp's threads do not exist there).
//
// Lifetime / global state: pools live in one process-wide table keyed by thread count,
// created on first use by pool_for(threads) and intentionally never destroyed (no joins in
// static destructors at interpreter exit). After fork() the child starts with an empty table,
// so a forked worker never waits on threads that do not exist. A pool runs one job at a
// time; concurrent callers of the same pool are serialised by its mutex.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace prunecal {

// fn(task, worker) for task in [0, n_tasks), worker in [0, threads); the caller is worker 0.
// Tasks are handed out dynamically. Exceptions from fn are rethrown in the caller.
void parallel_for(int threads, int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

// Reads PRUNECAL_THREAD_RUNTIME (std::invalid_argument when malformed) and registers the fork
// handler, once per process (the module calls it at load; the first threaded call otherwise).
void thread_runtime_init();
// What a multi-threaded call runs on now: "pool", "openmp (<library>)", "pool (a forked child)",
// or "none (...)" when openmp is asked for and none is loaded.
std::string thread_runtime();

}  // namespace prunecal
