#include "client/load_test.h"

#include "client/attention_client.h"
#include "client/segment_times.h"
#include "client/synthetic_features.h"
#include "client/tensor_codec.h"

#include <sys/resource.h>

#include <algorithm>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace hvlm::client {
namespace {

using Clock = std::chrono::steady_clock;

// Distinct synthetic segments the sessions cycle through.
constexpr int64_t kSegmentPoolSize = 8;
// The failures of a run: how many, and the first one's message. Thread-safe.
class ErrorLog {
 public:
  void record(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (count_++ == 0) first_ = message;
  }
  int64_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }
  std::string first() const {
    std::lock_guard<std::mutex> lock(mu_);
    return first_;
  }

 private:
  mutable std::mutex mu_;
  int64_t count_ = 0;  // guarded by mu_
  std::string first_;  // guarded by mu_
};

// What one session measured; written only by its own thread, read after join.
struct SessionResult {
  SegmentTimes times;
  // Completion of its last measured segment, if any.
  bool measured_any = false;
  Clock::time_point last_done;
};

// A connection per channel needs a descriptor each; where the soft limit would not leave room
// for them (1024 is common), raises it toward the hard limit. Beyond that, a session whose
// connection cannot open fails with UNAVAILABLE and is counted like any other failure.
void make_room_for_connections(int64_t connections) {
  constexpr rlim_t kSpare = 64;  // stdio, the --json file, gRPC's own wakeup descriptors
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t wanted = static_cast<rlim_t>(connections) + kSpare;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < wanted) {
    limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// Connects `channel`: waits until it is ready or the deadline passes, except that a channel in
// TRANSIENT_FAILURE (its connection attempt failed) gets only kRetryGrace more to come back:
// gRPC retries after a backoff of about a second, which forgives a failure in a burst of
// connects, while a server that refuses connections costs a few seconds, not the whole
// timeout. Returns whether it is ready.
bool connect(grpc::Channel& channel, std::chrono::system_clock::time_point deadline) {
  constexpr auto kRetryGrace = std::chrono::seconds(3);
  for (grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
       state != GRPC_CHANNEL_READY; state = channel.GetState(/*try_to_connect=*/true)) {
    if (state == GRPC_CHANNEL_SHUTDOWN) return false;
    const auto until = state == GRPC_CHANNEL_TRANSIENT_FAILURE
                           ? std::min(deadline, std::chrono::system_clock::now() + kRetryGrace)
                           : deadline;
    if (!channel.WaitForStateChange(state, until)) return false;  // no change in time
  }
  return true;
}

// One load run: the shared, read-only inputs of its sessions and the outputs they fill.
class LoadRun {
 public:
  LoadRun(const LoadOptions& options, std::vector<std::unique_ptr<AttentionClient>> clients,
          std::vector<hvlm::v1::Tensor> pool)
      : options_(options),
        clients_(std::move(clients)),
        pool_(std::move(pool)),
        gate_(options.sessions),
        results_(static_cast<size_t>(options.sessions)) {}

  // Runs every session to its end; returns the summary's figures.
  RunSummary run() {
    std::vector<std::thread> threads;
    threads.reserve(results_.size());
    for (size_t i = 0; i < results_.size(); ++i) {
      try {
        threads.emplace_back([this, i] { run_session(i); });
      } catch (const std::system_error& e) {
        errors_.record("cannot start a thread for session " + std::to_string(i) + ": " + e.what());
        // The sessions without a thread never arrive themselves.
        for (size_t missing = i; missing < results_.size(); ++missing) gate_.arrive();
        break;
      }
    }
    for (std::thread& thread : threads) thread.join();
    return summarize();
  }

 private:
  const hvlm::v1::Tensor& segment(size_t session, uint64_t index) const {
    return pool_[(session + index) % pool_.size()];
  }

  void run_session(size_t index) {
    SessionResult& result = results_[index];
    const AttentionClient& client = *clients_[index % clients_.size()];
    bool arrived = false;
    std::string session_id;
    try {
      const hvlm::v1::SessionInfo session = client.open_session(options_.stack, "");
      session_id = session.session_id();
      // Deadline: a timeout per warmup and measured segment; for the gate's wait, which lasts
      // until the slowest session has opened and warmed up, one per warmup segment and one for
      // its OpenSession; one for slack; plus the duration when measuring for a time.
      std::unique_ptr<SegmentStream> stream = client.stream_segments(
          session_id, session.segments_seen(),
          2 * options_.warmup_segments + options_.segments_per_session + 3,
          options_.duration_seconds);
      uint64_t sent = 0;
      for (; sent < static_cast<uint64_t>(options_.warmup_segments); ++sent) {
        stream->exchange(segment(index, sent));
      }
      arrived = true;
      const Clock::time_point start = gate_.arrive_and_wait();
      const Clock::time_point end =
          start + std::chrono::duration_cast<Clock::duration>(
                      std::chrono::duration<double>(options_.duration_seconds));
      for (int64_t measured = 0;; ++measured) {
        if (options_.duration_seconds > 0 ? Clock::now() >= end
                                          : measured >= options_.segments_per_session) {
          break;
        }
        const SegmentStream::Exchange exchange = stream->exchange(segment(index, sent++));
        result.times.add(exchange);
        result.measured_any = true;
        result.last_done = Clock::now();
      }
      stream->finish();
    } catch (const std::exception& e) {
      errors_.record(e.what());
    }
    if (!arrived) gate_.arrive();
    if (!session_id.empty()) {
      try {
        client.close_session(session_id);
      } catch (const std::exception& e) {
        errors_.record(e.what());
      }
    }
  }

  RunSummary summarize() {
    SegmentTimes times;
    bool measured_any = false;
    Clock::time_point last_done;
    for (const SessionResult& result : results_) {
      times.merge(result.times);
      if (result.measured_any) {
        last_done = measured_any ? std::max(last_done, result.last_done) : result.last_done;
        measured_any = true;
      }
    }
    // Every arrival has happened once the threads are joined, so the gate is open.
    const Clock::time_point start = gate_.open_time();
    const double seconds =
        measured_any ? std::chrono::duration<double>(last_done - start).count() : 0.0;

    RunSummary summary;
    summary.mode = "load";
    summary.stack = options_.stack;
    summary.sessions = options_.sessions;
    summary.segment_tokens = options_.segment_frames;
    summary.batch = std::max<int64_t>(options_.batch, 1);
    summary.dtype = dtype_name(*options_.dtype);
    summary.warmup_segments = options_.warmup_segments;
    summary.seconds = seconds;
    times.summarize(seconds, summary);
    summary.errors = errors_.count();
    summary.first_error = errors_.first();
    return summary;
  }

  const LoadOptions& options_;
  const std::vector<std::unique_ptr<AttentionClient>> clients_;
  const std::vector<hvlm::v1::Tensor> pool_;
  StartGate gate_;
  std::vector<SessionResult> results_;  // element i written only by session i's thread
  ErrorLog errors_;
};

}  // namespace

StartGate::StartGate(int64_t parties) : missing_(parties) {
  if (missing_ <= 0) open_at_ = Clock::now();
}

void StartGate::count_arrival_locked() {
  if (missing_ > 0 && --missing_ == 0) {
    open_at_ = Clock::now();
    opened_.notify_all();
  }
}

void StartGate::arrive() {
  std::lock_guard<std::mutex> lock(mu_);
  count_arrival_locked();
}

std::chrono::steady_clock::time_point StartGate::arrive_and_wait() {
  std::unique_lock<std::mutex> lock(mu_);
  count_arrival_locked();
  opened_.wait(lock, [this] { return missing_ == 0; });
  return open_at_;
}

std::chrono::steady_clock::time_point StartGate::open_time() {
  std::lock_guard<std::mutex> lock(mu_);
  return open_at_;
}

RunSummary run_load(const LoadOptions& options, std::ostream& out) {
  if (!options.json_path.empty()) check_output_path("--json", options.json_path);
  const ConnectionOptions& connection = options.connection;
  // Without --channels, a connection per session, as when each session is its own client.
  // Sessions that share a connection share its HTTP/2 transport, which on gRPC 1.51 carried
  // ~2,500 segments of 64 x 768 float32 a second each way whatever the cores
  // (docs/benchmarks.md, "Service").
  const int64_t channel_count = options.channels > 0 ? options.channels : options.sessions;
  make_room_for_connections(channel_count);
  // Every connection first, all within one timeout: in a burst of first connects one failed at
  // once on the H200 host, and calls are not wait-for-ready, so that session's OpenSession
  // failed on its connection's start. A channel that does not connect (see connect()) is used
  // as it is: its calls then fail and are reported.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int64_t c = 0; c < channel_count; ++c) channels.push_back(make_channel(connection, channel_count > 1));
  // All connect at once; the rest are waited for only when the first connected (all reach the
  // same server), and all within one timeout.
  for (const auto& channel : channels) channel->GetState(/*try_to_connect=*/true);
  const auto connect_deadline = AttentionClient::deadline_after(connection.timeout_seconds);
  if (connect(*channels.front(), connect_deadline)) {
    for (size_t c = 1; c < channels.size(); ++c) connect(*channels[c], connect_deadline);
  }
  std::vector<std::unique_ptr<AttentionClient>> clients;
  for (const auto& channel : channels) {
    clients.push_back(std::make_unique<AttentionClient>(channel, connection.timeout_seconds));
  }
  // The run's options with the stack's dim and dtype filled in where not given.
  LoadOptions resolved = options;
  if (options.dim == 0 || !options.dtype) {
    const hvlm::v1::StackInfo stack = clients[0]->find_stack(options.stack);
    if (options.dim == 0) resolved.dim = stack.dim();
    if (!options.dtype) resolved.dtype = stack_wire_dtype(stack);
  }
  const int64_t dim = resolved.dim;
  if (dim < 1 || dim > kMaxDim) {
    throw std::runtime_error("stack '" + options.stack + "' reports dim " + std::to_string(dim) +
                             "; pass --dim");
  }
  const hvlm::v1::DType dtype = *resolved.dtype;
  check_load_size(resolved, dim, dtype);

  // A few distinct segments, encoded once and shared read-only by every session.
  std::vector<int64_t> shape = {options.segment_frames, dim};
  if (options.batch > 0) shape.insert(shape.begin(), options.batch);
  const size_t elements = static_cast<size_t>(std::max<int64_t>(options.batch, 1) *
                                              options.segment_frames * dim);
  std::vector<hvlm::v1::Tensor> pool(
      static_cast<size_t>(std::min(kSegmentPoolSize, options.sessions)));
  SyntheticFeatures generator(options.seed);
  std::vector<float> values(elements);
  for (hvlm::v1::Tensor& tensor : pool) {
    generator.fill(values.data(), values.size());
    encode_tensor(values.data(), shape, dtype, &tensor);
  }

  out << "load: " << options.sessions << " sessions on " << channel_count << " channel"
      << (channel_count == 1 ? "" : "s") << ", stack " << options.stack << ", segments "
      << shape_string(shape) << " " << dtype_name(dtype) << ", "
      << options.warmup_segments << " warmup then ";
  if (options.duration_seconds > 0) {
    out << options.duration_seconds << " s";
  } else {
    out << options.segments_per_session << " measured segments";
  }
  out << " per session" << std::endl;

  RunSummary summary = LoadRun(resolved, std::move(clients), std::move(pool)).run();
  summary.dim = dim;
  print_summary(summary, out);
  if (!options.json_path.empty()) write_summary_json(summary, options.json_path);
  return summary;
}

}  // namespace hvlm::client
