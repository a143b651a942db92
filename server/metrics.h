// A small Prometheus client: counters, gauges and histograms with labels, kept in a Registry
// that renders the text exposition format 0.0.4. Debian 12 does not package prometheus-cpp,
// so this is our own, with only what hvlm needs.
//
// Hot path: a metric child (one label combination) is looked up once and then updated with
// lock-free atomics; Family::labels() takes a mutex and may be called per request where the
// label values are only known then. Values are never removed, so a reference returned by
// labels() stays valid for the Registry's lifetime.
//
// Callback families hold no values of their own: their function is called on each render to
// report values kept elsewhere (session counts, process statistics).
//
// Thread-safety: everything is safe to call concurrently. Register families before other
// threads render; a family registered later simply appears in later renders.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace hvlm::metrics {

using Labels = std::vector<std::string>;

class Counter {
 public:
  /// Adds `amount`, which must be >= 0 (negative amounts are ignored: counters only go up).
  void inc(double amount = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void set(double value) { value_.store(value, std::memory_order_relaxed); }
  void add(double amount);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  /// `upper_bounds`: finite, strictly increasing; +Inf is implied.
  explicit Histogram(std::vector<double> upper_bounds);
  /// Counts `value` in the first bucket whose upper bound is >= value.
  void observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;      // without +Inf
    std::vector<uint64_t> cumulative;      // one per bound, then the +Inf bucket (= count)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  const std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bucket, not cumulative; +Inf last
  std::atomic<double> sum_{0.0};
};

/// `count` bounds start, start*factor, ... (Prometheus' ExponentialBuckets).
std::vector<double> exponential_buckets(double start, double factor, int count);

enum class MetricType { kCounter, kGauge, kHistogram };

// All children of one metric name, one per label combination.
template <typename Metric>
class Family {
 public:
  /// The child for `values` (one per label name, in order), created on first use. Throws
  /// std::invalid_argument when the number of values is wrong.
  Metric& labels(const Labels& values);
  /// The child without labels (a family registered with no label names).
  Metric& get() { return labels({}); }

 private:
  friend class Registry;
  Family(std::string name, std::string help, Labels label_names, std::vector<double> buckets)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)),
        buckets_(std::move(buckets)) {}
  template <typename Visit>
  void for_each(Visit visit) const;

  const std::string name_;
  const std::string help_;
  const Labels label_names_;
  const std::vector<double> buckets_;  // histograms only
  mutable std::mutex mu_;
  std::map<Labels, std::unique_ptr<Metric>> children_;  // guarded by mu_
};

/// One value a callback family reports.
struct Sample {
  Labels label_values;
  double value = 0;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  /// Each registration throws std::invalid_argument for an invalid or already registered
  /// name (also one that equals a histogram's _bucket, _sum or _count series, or the reverse),
  /// an invalid label name, or (histograms) bounds that are not finite and increasing.
  Family<Counter>& counter(const std::string& name, const std::string& help, Labels label_names = {});
  Family<Gauge>& gauge(const std::string& name, const std::string& help, Labels label_names = {});
  Family<Histogram>& histogram(const std::string& name, const std::string& help, Labels label_names,
                               std::vector<double> upper_bounds);
  /// A counter or gauge whose samples `collect` reports at each render. `collect` runs on the
  /// rendering thread and must be thread-safe; a sample with the wrong number of label values
  /// is skipped.
  void callback(MetricType type, const std::string& name, const std::string& help, Labels label_names,
                std::function<std::vector<Sample>()> collect);

  /// Every family in registration order, in the text exposition format 0.0.4.
  std::string render() const;

 private:
  struct Entry;
  void add(std::unique_ptr<Entry> entry);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_;  // guarded by mu_ (the vector, not the families)
};

/// The Content-Type of render()'s output.
inline constexpr const char* kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace hvlm::metrics
