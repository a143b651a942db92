#include "server/segment_batcher.h"

#include "server/thread_name.h"

#include <c10/util/Exception.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace hvlm {
namespace {

// The batcher and finisher threads are the one serial path every batched segment takes; on a
// busy host (request threads, or a load client beside the server) the scheduler would share
// the cores evenly and stretch every pass. Each raises its own priority (Linux nice values are
// per thread) where the process may (root or CAP_SYS_NICE); elsewhere it keeps the default.
constexpr int kPipelineNice = -10;

void raise_thread_priority() {
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  (void)setpriority(PRIO_PROCESS, tid, kPipelineNice);  // EACCES/EPERM: stays as it was
}

}  // namespace

SegmentBatcher::SegmentBatcher(Options options, SessionStore& sessions, WorkerPool& completions,
                               ServiceMetrics& metrics)
    : options_(options), sessions_(sessions), completions_(completions), metrics_(metrics) {
  finisher_ = std::thread([this] {
    name_this_thread("hvlm-finisher");
    raise_thread_priority();
    if (options_.thread_init) options_.thread_init();
    finish_loop();
  });
  thread_ = std::thread([this] {
    name_this_thread("hvlm-batcher");
    raise_thread_priority();
    if (options_.thread_init) options_.thread_init();
    loop();
    {
      std::lock_guard<std::mutex> lock(finish_mu_);
      launching_done_ = true;
    }
    finish_cv_.notify_all();
  });
}

SegmentBatcher::~SegmentBatcher() { shutdown(); }

bool SegmentBatcher::submit(PreparedSegment segment, Done done, StillWanted still_wanted) {
  Job job{std::move(segment), {}, std::move(done), std::move(still_wanted), Clock::now()};
  job.key = batch_key(job.segment);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || static_cast<int64_t>(queue_.size()) >= options_.max_queued) return false;
    queue_.push_back(std::move(job));
    // The batcher waits for a first segment, then for a full batch or the deadline: only a
    // push that can end one of those waits wakes it. (Waking it for every segment cost it a
    // wake-up and a scan of the queue per segment, on the thread every batch goes through.)
    const size_t queued = queue_.size();
    wake = queued == 1 || queued >= static_cast<size_t>(std::max<int64_t>(1, options_.max_batch_size));
  }
  if (wake) cv_.notify_one();
  return true;
}

size_t SegmentBatcher::queued() {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

void SegmentBatcher::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (finisher_.joinable()) finisher_.join();
}

void SegmentBatcher::loop() {
  const auto delay = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.max_queue_delay_seconds));
  const size_t max_batch = static_cast<size_t>(std::max<int64_t>(1, options_.max_batch_size));
  for (;;) {
    {
      // At most kMaxInFlight batches issued and not yet finished: the next one forms only when
      // the device is about to need it, so it takes in everything that arrived meanwhile.
      std::unique_lock<std::mutex> lock(finish_mu_);
      finish_cv_.wait(lock, [this] { return in_flight_ < kMaxInFlight; });
    }
    std::vector<Job> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      const std::vector<int64_t> key = queue_.front().key;
      auto matching = [&] {
        return static_cast<size_t>(std::count_if(queue_.begin(), queue_.end(),
                                                 [&](const Job& j) { return j.key == key; }));
      };
      // Wait for company until the oldest segment's deadline, unless the batch is full.
      const auto deadline = queue_.front().submitted + delay;
      cv_.wait_until(lock, deadline, [&] { return stopping_ || matching() >= max_batch; });
      for (auto it = queue_.begin(); it != queue_.end() && batch.size() < max_batch;) {
        if (it->key == key) {
          batch.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
    }
    run(batch);
  }
}

void SegmentBatcher::run(std::vector<Job>& batch) {
  const auto start = Clock::now();
  // Segments nobody waits for any more (cancelled, past their deadline) are answered with that
  // error without running; their leases go with them, their sessions unchanged.
  std::vector<Job> wanted;
  wanted.reserve(batch.size());
  for (Job& job : batch) {
    try {
      if (job.still_wanted) job.still_wanted();
      wanted.push_back(std::move(job));
    } catch (...) {
      job.segment = PreparedSegment{};
      SegmentOutcome dropped;
      dropped.error = std::current_exception();
      job.done(std::move(dropped), StageTimings{});
    }
  }
  batch = std::move(wanted);
  if (batch.empty()) return;
  std::vector<PreparedSegment> segments;
  segments.reserve(batch.size());
  for (Job& job : batch) segments.push_back(std::move(job.segment));
  const std::string stack = segments.front().lease->stack().name;
  try {
    Launched launched{launch_segment_batch(segments), std::move(batch), start, stack};
    metrics_.batch_issued(stack, std::chrono::duration<double>(Clock::now() - start).count());
    {
      std::lock_guard<std::mutex> lock(finish_mu_);
      ++in_flight_;
      launched_.push_back(std::move(launched));
    }
    finish_cv_.notify_all();
    return;
  } catch (const c10::OutOfMemoryError&) {
    // Too big together: every segment gets RESOURCE_EXHAUSTED (retrying them one by one
    // would only repeat the allocation failure under the same pressure).
    const std::exception_ptr error = std::current_exception();
    std::vector<SegmentOutcome> outcomes(segments.size());
    for (auto& o : outcomes) o.error = error;
    segments.clear();  // releases the leases before anyone is told
    complete(batch, outcomes, StageTimings{}, start);
  } catch (...) {
    // One segment may have made the whole pass fail: run each alone (the leases are still
    // held), so that only the culprit gets the error.
    const std::exception_ptr error = std::current_exception();
    std::vector<SegmentOutcome> outcomes(segments.size());
    StageTimings shared;
    if (segments.size() == 1) {
      outcomes.front().error = error;
    } else {
      for (size_t j = 0; j < segments.size(); ++j) {
        std::vector<PreparedSegment> alone;
        alone.push_back(std::move(segments[j]));
        try {
          outcomes[j] = std::move(run_segment_batch(sessions_, alone, &shared).front());
          metrics_.batch_done(stack, 1);
        } catch (...) {
          outcomes[j].error = std::current_exception();
        }
      }
    }
    segments.clear();  // releases the leases of a failed batch before anyone is told
    complete(batch, outcomes, shared, start);
  }
}

void SegmentBatcher::finish_loop() {
  for (;;) {
    Launched launched;
    {
      std::unique_lock<std::mutex> lock(finish_mu_);
      finish_cv_.wait(lock, [this] { return launching_done_ || !launched_.empty(); });
      if (launched_.empty()) return;  // the batcher stopped and everything is finished
      launched = std::move(launched_.front());
      launched_.pop_front();
    }
    StageTimings shared;
    std::vector<SegmentOutcome> outcomes = finish_segment_batch(sessions_, *launched.batch, &shared);
    metrics_.batch_done(launched.stack, static_cast<int64_t>(outcomes.size()));
    launched.batch.reset();  // releases what is left of the leases before anyone is told
    complete(launched.jobs, outcomes, shared, launched.start);
    {
      std::lock_guard<std::mutex> lock(finish_mu_);
      --in_flight_;
    }
    finish_cv_.notify_all();
  }
}

void SegmentBatcher::complete(std::vector<Job>& jobs, std::vector<SegmentOutcome>& outcomes,
                              const StageTimings& shared, Clock::time_point start) {
  for (size_t j = 0; j < jobs.size(); ++j) {
    StageTimings t = shared;
    t.queue_micros = micros_between(jobs[j].submitted, start);
    // The wait for a worker to answer is queueing too, like the waits before the pass.
    auto deliver = [done = std::move(jobs[j].done), outcome = std::move(outcomes[j]), t,
                    handed = Clock::now()]() mutable {
      t.queue_micros += micros_since(handed);
      done(std::move(outcome), t);
    };
    // The pool takes copies; when it refuses (full or stopping), deliver here.
    auto shared_deliver = std::make_shared<decltype(deliver)>(std::move(deliver));
    if (!completions_.try_submit([shared_deliver] { (*shared_deliver)(); })) (*shared_deliver)();
  }
}

}  // namespace hvlm
