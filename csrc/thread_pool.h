// A small std::thread pool (no OpenMP: torch ships its own runtime, two would fight).
//
// Lifetime / global state: pools live in one process-wide table keyed by thread count,
// created on first use by pool_for(threads) and intentionally never destroyed (no joins in
// static destructors at interpreter exit). After fork() the child starts with an empty table,
// so a forked worker never waits on threads that do not exist. A pool runs one job at a
// time; concurrent callers of the same pool are serialised by its mutex.
#pragma once
#include <cstdint>
#include <functional>

namespace prunecal {

class ThreadPool;

// fn(task, worker) for task in [0, n_tasks), worker in [0, threads); the caller is worker 0.
// Tasks are handed out dynamically. Exceptions from fn are rethrown in the caller.
void parallel_for(int threads, int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

}  // namespace prunecal
