#include "client/stream_session.h"

#include "client/attention_client.h"
#include "client/npy.h"
#include "client/segment_times.h"
#include "client/synthetic_features.h"
#include "client/tensor_codec.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

namespace hvlm::client {
namespace {

using Clock = std::chrono::steady_clock;

FeatureArray read_features(const StreamOptions& options) {
  NpyArray array = read_npy(options.input_path);
  const std::vector<int64_t>& shape = array.shape;
  const bool usable = (shape.size() == 2 || shape.size() == 3) &&
                      std::none_of(shape.begin(), shape.end(), [](int64_t d) { return d == 0; });
  if (!usable) {
    throw UsageError("--input: " + options.input_path + " holds an array of shape " +
                     shape_string(shape) + "; expected [N, D] or [B, N, D] with N, D, B >= 1");
  }
  FeatureArray features;
  features.rank = static_cast<int>(shape.size());
  features.batch = features.rank == 3 ? shape[0] : 1;
  features.frames = shape[shape.size() - 2];
  features.dim = shape.back();
  features.values = std::move(array.values);
  if (options.dim > 0 && options.dim != features.dim) {
    throw UsageError("--dim: " + std::to_string(options.dim) + " does not match the dimension " +
                     std::to_string(features.dim) + " of --input " + options.input_path);
  }
  if (options.batch > 0 && (features.rank != 3 || options.batch != features.batch)) {
    throw UsageError("--batch: " + std::to_string(options.batch) + " does not match --input " +
                     options.input_path + " of shape " + shape_string(shape));
  }
  return features;
}

FeatureArray synthesize_features(const StreamOptions& options, int64_t dim) {
  FeatureArray features;
  features.rank = options.batch > 0 ? 3 : 2;
  features.batch = std::max<int64_t>(options.batch, 1);
  features.frames = options.frames;
  features.dim = dim;
  if (features.frames > kMaxSyntheticElements / features.dim / features.batch) {
    throw UsageError("--frames: " + std::to_string(features.frames) + " frames of dim " +
                     std::to_string(dim) + " exceed " + std::to_string(kMaxSyntheticElements) +
                     " synthetic elements");
  }
  features.values.resize(static_cast<size_t>(features.batch * features.frames * features.dim));
  SyntheticFeatures(options.seed).fill(features.values.data(), features.values.size());
  return features;
}

std::string format_ms(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3f", value);
  return text;
}

std::string micros_as_ms(int64_t micros) { return format_ms(static_cast<double>(micros) / 1e3); }

}  // namespace

std::vector<int64_t> FeatureArray::shape() const {
  if (rank == 3) return {batch, frames, dim};
  return {frames, dim};
}

std::vector<float> FeatureArray::slice_frames(int64_t start, int64_t count) const {
  std::vector<float> segment(static_cast<size_t>(batch * count * dim));
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(segment.data() + b * count * dim, values.data() + (b * frames + start) * dim,
                static_cast<size_t>(count * dim) * sizeof(float));
  }
  return segment;
}

void FeatureArray::store_frames(int64_t start, int64_t count, const std::vector<float>& segment) {
  for (int64_t b = 0; b < batch; ++b) {
    std::memcpy(values.data() + (b * frames + start) * dim, segment.data() + b * count * dim,
                static_cast<size_t>(count * dim) * sizeof(float));
  }
}

RunSummary run_stream(const StreamOptions& options, std::ostream& out) {
  if (!options.output_path.empty()) check_output_path("--output", options.output_path);
  if (!options.json_path.empty()) check_output_path("--json", options.json_path);
  const ConnectionOptions& connection = options.connection;
  const AttentionClient client(make_channel(connection), connection.timeout_seconds);

  // The stack's description, asked for once and only if needed (for the dim or the dtype).
  std::optional<hvlm::v1::StackInfo> stack;
  auto stack_info = [&]() -> const hvlm::v1::StackInfo& {
    if (!stack) stack = client.find_stack(options.stack);
    return *stack;
  };
  FeatureArray features;
  if (!options.input_path.empty()) {
    features = read_features(options);
  } else {
    const int64_t dim = options.dim > 0 ? options.dim : stack_info().dim();
    if (dim < 1 || dim > kMaxDim) {
      throw std::runtime_error("stack '" + options.stack + "' reports dim " +
                               std::to_string(dim) + "; pass --dim");
    }
    features = synthesize_features(options, dim);
  }
  const hvlm::v1::DType dtype = options.dtype ? *options.dtype : stack_wire_dtype(stack_info());
  // A value beyond a 16-bit dtype's range would reach the server as infinity and be refused as
  // non-finite; saying so here names the real problem, before a session is opened.
  if (const int64_t i = first_overflow(features.values.data(), features.values.size(), dtype); i >= 0) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", static_cast<double>(features.values[static_cast<size_t>(i)]));
    throw TensorCodecError(std::string("the features hold ") + value + " (element " + std::to_string(i) +
                           " in row-major order), beyond the range of " + dtype_name(dtype) +
                           (options.dtype ? ", the wire dtype; --dtype float32 sends it unchanged (the stack's "
                                            "dtype must still hold it)"
                                          : ", the stack's dtype and so the wire's: the stack cannot take it"));
  }
  // The outputs have the features' shape; their values are kept only to be written.
  const bool keep_outputs = !options.output_path.empty();
  FeatureArray outputs;
  outputs.rank = features.rank;
  outputs.batch = features.batch;
  outputs.frames = features.frames;
  outputs.dim = features.dim;
  if (keep_outputs) outputs.values.resize(features.values.size());
  const int64_t segment_frames = options.segment_frames;
  const int64_t segments = (features.frames + segment_frames - 1) / segment_frames;

  const hvlm::v1::SessionInfo session = client.open_session(options.stack, options.session_id);
  const std::string& session_id = session.session_id();
  out << "session " << session_id << " on stack " << options.stack << ": features "
      << shape_string(features.shape()) << " as " << dtype_name(dtype) << ", " << segments
      << " segments of up to " << segment_frames << " frames\n";
  if (options.warmup_segments >= segments) {
    out << "note: all " << segments << " segments are warmup (--warmup "
        << options.warmup_segments << "); no statistics\n";
  }

  SegmentTimes times;
  double measured_seconds = 0;
  try {
    // One timeout per segment, plus one for slack.
    std::unique_ptr<SegmentStream> stream =
        client.stream_segments(session_id, session.segments_seen(), segments + 1);
    Clock::time_point measure_start = Clock::now();
    hvlm::v1::Tensor tensor;
    for (int64_t s = 0; s < segments; ++s) {
      const int64_t start = s * segment_frames;
      const int64_t count = std::min(segment_frames, features.frames - start);
      std::vector<int64_t> shape = {count, features.dim};
      if (features.rank == 3) shape.insert(shape.begin(), features.batch);
      encode_tensor(features.slice_frames(start, count).data(), shape, dtype, &tensor);

      if (s == options.warmup_segments) measure_start = Clock::now();
      const SegmentStream::Exchange exchange = stream->exchange(tensor);
      const hvlm::v1::StageTimings& timings = exchange.response.timings();
      // Decoding also checks the output's byte size.
      const DecodedTensor output = decode_tensor(exchange.response.output());
      if (keep_outputs) outputs.store_frames(start, count, output.values);

      const bool warmup = s < options.warmup_segments;
      if (!warmup) {
        times.add(exchange);
      }
      char frames_text[64];
      std::snprintf(frames_text, sizeof frames_text, "%lld..%lld",
                    static_cast<long long>(start), static_cast<long long>(start + count - 1));
      out << "segment " << exchange.response.sequence() << "  frames " << frames_text
          << "  round trip " << format_ms(exchange.round_trip_ms) << " ms  server: queue "
          << micros_as_ms(timings.queue_micros()) << " decode "
          << micros_as_ms(timings.decode_micros()) << " compute "
          << micros_as_ms(timings.compute_micros()) << " memory "
          << micros_as_ms(timings.memory_update_micros()) << " encode "
          << micros_as_ms(timings.encode_micros()) << " ms" << (warmup ? "  (warmup)" : "")
          << "\n";
    }
    if (segments > options.warmup_segments) {
      measured_seconds = std::chrono::duration<double>(Clock::now() - measure_start).count();
    }
    stream->finish();
  } catch (...) {
    try {
      client.close_session(session_id);
    } catch (const std::exception&) {
      // The first failure is the one to report.
    }
    throw;
  }
  client.close_session(session_id);

  if (!options.output_path.empty()) {
    write_npy(options.output_path, outputs.shape(), outputs.values.data());
    out << "wrote " << options.output_path << " " << shape_string(outputs.shape())
        << " float32\n";
  }

  RunSummary summary;
  summary.mode = "stream";
  summary.stack = options.stack;
  summary.sessions = 1;
  summary.segment_tokens = segment_frames;
  summary.batch = features.batch;
  summary.dim = features.dim;
  summary.dtype = dtype_name(dtype);
  summary.warmup_segments = options.warmup_segments;
  summary.seconds = measured_seconds;
  times.summarize(measured_seconds, summary);
  print_summary(summary, out);
  if (!options.json_path.empty()) write_summary_json(summary, options.json_path);
  return summary;
}

}  // namespace hvlm::client
